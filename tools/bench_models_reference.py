"""Reference timings for `sera bench models`: the same work as sera, written with PyTorch,
torchaudio and transformers at the same shapes. Prints one JSON object (last line of stdout).

    python tools/bench_models_reference.py --device cpu --fbank-batch 32 --fbank-iters 3 \
        --ast-batch 2 --ast-iters 1 --w2v-batch 2 --w2v-seconds 6 --w2v-iters 1

- fbank: `torchaudio.compliance.kaldi.fbank` clip by clip, exactly as transformers'
  `ASTFeatureExtractor` calls it (hanning window, 128 bins, no dither, 10 ms shift), then the
  pad/cut to 1024 frames and the AudioSet normalisation; also `ASTFeatureExtractor.__call__` itself.
- AST: `ASTModel(ASTConfig())` randomly initialised (12 × 768, 1214 tokens); features = pooler output
  of spectrograms without gradients; step = train-mode forward, linear head, cross-entropy, backward,
  AdamW (lr 1e-5 model, 1e-3 head).
- wav2vec2-large-robust-12 geometry with layerdrop 0 (as sera's bench): features = per-utterance
  normalisation, encoder, masked mean; step as for AST. Throughput in audio seconds per second.

Needs torch, torchaudio and transformers (tested with 2.11.0, 2.11.0, 5.24.0). fp32; threads are
torch's default, like sera's.
"""
import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
import transformers
from transformers import ASTConfig, ASTFeatureExtractor, ASTModel, Wav2Vec2Config, Wav2Vec2Model

MEAN, STD, MAX_LEN = -4.2677393, 4.5689974, 1024


def per_call(device, iters, fn, warmup=1):
    """Seconds of the fastest of `iters` calls after `warmup` (as sera: a shared machine only adds time)."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    best = float("inf")
    for _ in range(max(iters, 1)):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def ast_front_end(wav):
    """What ASTFeatureExtractor._extract_fbank_features + normalisation compute, for one clip."""
    fbank = torchaudio.compliance.kaldi.fbank(
        wav.unsqueeze(0), sample_frequency=16000, htk_compat=True, window_type="hanning",
        num_mel_bins=128, dither=0.0, frame_shift=10)
    n = fbank.shape[0]
    if n < MAX_LEN:
        fbank = F.pad(fbank, (0, 0, 0, MAX_LEN - n))
    else:
        fbank = fbank[:MAX_LEN]
    return (fbank - MEAN) / (2 * STD)


def step(pooled, head, y, opt):
    loss = F.cross_entropy(head(pooled), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    loss.item()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--fbank-batch", type=int, default=32)
    p.add_argument("--fbank-iters", type=int, default=5)
    p.add_argument("--ast-batch", type=int, default=2)
    p.add_argument("--ast-iters", type=int, default=1)
    p.add_argument("--w2v-batch", type=int, default=2)
    p.add_argument("--w2v-seconds", type=float, default=6.0)
    p.add_argument("--w2v-iters", type=int, default=1)
    p.add_argument("--fbank-only", action="store_true")
    a = p.parse_args()
    dev = torch.device(a.device)
    torch.manual_seed(0)
    out = {"torch": torch.__version__, "torchaudio": torchaudio.__version__,
           "transformers": transformers.__version__, "threads": torch.get_num_threads()}

    wav = torch.randn(a.fbank_batch, 160_000, device=dev) * 0.1
    with torch.no_grad():
        s = per_call(dev, a.fbank_iters, lambda: torch.stack([ast_front_end(w) for w in wav]))
    out["fbank_hours_per_s"] = a.fbank_batch * 10 / 3600 / s
    extractor = ASTFeatureExtractor()
    clips = [w.cpu().numpy() for w in wav]
    s = per_call(dev, a.fbank_iters, lambda: extractor(clips, sampling_rate=16000, return_tensors="pt"))
    out["fbank_extractor_hours_per_s"] = a.fbank_batch * 10 / 3600 / s
    if a.fbank_only:
        print(json.dumps(out))
        return

    classes = 4
    ast = ASTModel(ASTConfig()).to(dev)
    spec = torch.randn(a.ast_batch, 1024, 128, device=dev)
    y = torch.randint(0, classes, (a.ast_batch,), device=dev)
    ast.eval()
    with torch.no_grad():
        s = per_call(dev, a.ast_iters, lambda: ast(spec).pooler_output)
    out["ast_features_clips_per_s"] = a.ast_batch / s
    head = torch.nn.Linear(768, classes).to(dev)
    opt = torch.optim.AdamW([{"params": ast.parameters(), "lr": 1e-5}, {"params": head.parameters(), "lr": 1e-3}])
    ast.train()
    s = per_call(dev, a.ast_iters, lambda: step(ast(spec).pooler_output, head, y, opt))
    out["ast_step_clips_per_s"] = a.ast_batch / s

    def step_bf16():
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
            pooled = ast(spec).pooler_output.float()
        return step(pooled, head, y, opt)

    s = per_call(dev, a.ast_iters, step_bf16)
    out["ast_step_bf16_clips_per_s"] = a.ast_batch / s
    del ast, opt, head

    cfg = Wav2Vec2Config(hidden_size=1024, num_hidden_layers=12, num_attention_heads=16, intermediate_size=4096,
                         feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
                         feat_proj_dropout=0.1, layerdrop=0.0)
    w2v = Wav2Vec2Model(cfg).to(dev)
    samples = int(a.w2v_seconds * 16000)
    raw = torch.randn(a.w2v_batch, samples, device=dev) * 0.1
    mask = torch.ones(a.w2v_batch, samples, dtype=torch.long, device=dev)
    y = torch.randint(0, classes, (a.w2v_batch,), device=dev)

    def pooled():
        m = mask.to(raw.dtype)
        n = m.sum(-1, keepdim=True)
        mean = (raw * m).sum(-1, keepdim=True) / n
        var = (((raw - mean) * m) ** 2).sum(-1, keepdim=True) / n
        x = (raw - mean) / torch.sqrt(var + 1e-7) * m
        h = w2v(x, attention_mask=mask).last_hidden_state
        fm = w2v._get_feature_vector_attention_mask(h.shape[1], mask).unsqueeze(-1).to(h.dtype)
        return (h * fm).sum(1) / fm.sum(1).clamp_min(1)

    w2v.eval()
    with torch.no_grad():
        s = per_call(dev, a.w2v_iters, pooled)
    audio_s = a.w2v_batch * a.w2v_seconds
    out["w2v_features_audio_s_per_s"] = audio_s / s
    head = torch.nn.Linear(1024, classes).to(dev)
    opt = torch.optim.AdamW([{"params": w2v.parameters(), "lr": 1e-5}, {"params": head.parameters(), "lr": 1e-3}])
    w2v.train()
    s = per_call(dev, a.w2v_iters, lambda: step(pooled(), head, y, opt))
    out["w2v_step_audio_s_per_s"] = audio_s / s
    print(json.dumps(out))


if __name__ == "__main__":
    main()
