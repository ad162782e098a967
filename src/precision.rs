//! bf16 autocast. tch 0.24 wraps libtorch's autocast only for CUDA and only in its default dtype
//! (fp16), so we call libtorch's own `at::autocast` entry points (exported C++ functions of
//! libtorch_cpu, linked through torch-sys) to select bf16 for the CPU or CUDA. Autocast state is
//! thread-local in libtorch, as is the guard here.

use tch::Device;

// The exported Itanium-ABI symbols of libtorch 2.11 (checked with `nm -D libtorch_cpu.so`).
// `c10::DeviceType` and `c10::ScalarType` are `enum class : int8_t`.
unsafe extern "C" {
    #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
    fn set_autocast_enabled(device_type: i8, enabled: bool);
    #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
    fn set_autocast_dtype(device_type: i8, dtype: i8);
    #[link_name = "_ZN2at8autocast11clear_cacheEv"]
    fn clear_cache();
}

const CPU: i8 = 0;
const CUDA: i8 = 1;
/// `c10::ScalarType::BFloat16`.
const BFLOAT16: i8 = 15;

/// Runs `f` with bf16 autocast enabled for `device`'s type: matmuls, convolutions and attention
/// run in bf16, reductions and norms stay in fp32, as PyTorch's `torch.autocast(dtype=bfloat16)`.
pub fn bf16_autocast<T>(device: Device, f: impl FnOnce() -> T) -> T {
    let device_type = if device.is_cuda() { CUDA } else { CPU };
    struct Guard(i8);
    impl Drop for Guard {
        fn drop(&mut self) {
            // SAFETY: plain calls into libtorch's thread-local autocast state.
            unsafe {
                set_autocast_enabled(self.0, false);
                clear_cache();
            }
        }
    }
    // SAFETY: as above; BFLOAT16 is a valid c10::ScalarType value.
    unsafe {
        set_autocast_dtype(device_type, BFLOAT16);
        set_autocast_enabled(device_type, true);
    }
    let _guard = Guard(device_type);
    f()
}
