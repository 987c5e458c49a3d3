//! `--device auto|cpu|cuda[:N]`: what the user asked for, and what it
//! resolves to once the machine has been asked which devices answer.

use std::fmt;
use std::str::FromStr;

use crate::CudaError;

/// The device a user asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceRequest {
    /// CUDA device 0 when one answers, else the CPU (saying why).
    #[default]
    Auto,
    Cpu,
    /// CUDA device `N`; an error when it does not answer.
    Cuda(usize),
}

impl FromStr for DeviceRequest {
    type Err = CudaError;

    fn from_str(s: &str) -> Result<Self, CudaError> {
        let bad = || CudaError::BadDevice(s.to_string());
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => {
                let n = other.strip_prefix("cuda:").ok_or_else(bad)?;
                n.parse().map(Self::Cuda).map_err(|_| bad())
            }
        }
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Where the model runs, and for the CPU, why when the user asked for `auto`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResolvedDevice {
    Cpu { reason: Option<String> },
    Cuda(usize),
}

/// Asks the machine how many CUDA devices answer. A trait so that device
/// selection is tested without a GPU.
pub trait DeviceProbe {
    /// The number of devices, or why none can be asked (no driver, driver
    /// error).
    fn device_count(&self) -> Result<usize, String>;
}

/// Resolves a request against what the probe reports.
pub fn resolve(request: DeviceRequest, probe: &dyn DeviceProbe) -> Result<ResolvedDevice, CudaError> {
    match request {
        DeviceRequest::Cpu => Ok(ResolvedDevice::Cpu { reason: None }),
        DeviceRequest::Auto => Ok(match probe.device_count() {
            Ok(0) => ResolvedDevice::Cpu { reason: Some("the CUDA driver reports no device".into()) },
            Ok(_) => ResolvedDevice::Cuda(0),
            Err(why) => ResolvedDevice::Cpu { reason: Some(why) },
        }),
        DeviceRequest::Cuda(n) => match probe.device_count() {
            Ok(count) if n < count => Ok(ResolvedDevice::Cuda(n)),
            Ok(count) => Err(CudaError::NoSuchDevice { ordinal: n, count }),
            Err(why) => Err(CudaError::Unavailable(why)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Result<usize, String>);
    impl DeviceProbe for Fixed {
        fn device_count(&self) -> Result<usize, String> {
            self.0.clone()
        }
    }

    #[test]
    fn requests_parse_and_print_back() {
        for (text, want) in [
            ("auto", DeviceRequest::Auto),
            ("cpu", DeviceRequest::Cpu),
            ("CUDA", DeviceRequest::Cuda(0)),
            ("cuda:3", DeviceRequest::Cuda(3)),
        ] {
            assert_eq!(text.parse::<DeviceRequest>().unwrap(), want);
        }
        assert_eq!(DeviceRequest::Cuda(2).to_string().parse::<DeviceRequest>().unwrap(), DeviceRequest::Cuda(2));
        for bad in ["", "tpu", "cuda:", "cuda:x", "cuda:-1", "cpu:0"] {
            let err = bad.parse::<DeviceRequest>().unwrap_err();
            assert!(err.to_string().contains("auto, cpu, cuda or cuda:N"), "{bad}: {err}");
        }
    }

    #[test]
    fn auto_takes_the_first_gpu_and_falls_back_to_cpu_saying_why() {
        assert_eq!(resolve(DeviceRequest::Auto, &Fixed(Ok(2))).unwrap(), ResolvedDevice::Cuda(0));
        let cpu = resolve(DeviceRequest::Auto, &Fixed(Err("libcuda.so not found".into()))).unwrap();
        assert_eq!(cpu, ResolvedDevice::Cpu { reason: Some("libcuda.so not found".into()) });
        let none = resolve(DeviceRequest::Auto, &Fixed(Ok(0))).unwrap();
        assert!(matches!(none, ResolvedDevice::Cpu { reason: Some(r) } if r.contains("no device")));
    }

    #[test]
    fn an_explicit_gpu_that_does_not_answer_is_an_error() {
        assert_eq!(resolve(DeviceRequest::Cuda(1), &Fixed(Ok(2))).unwrap(), ResolvedDevice::Cuda(1));
        let err = resolve(DeviceRequest::Cuda(2), &Fixed(Ok(2))).unwrap_err();
        assert!(err.to_string().contains("cuda:2") && err.to_string().contains("2 device"), "{err}");
        let err = resolve(DeviceRequest::Cuda(0), &Fixed(Err("no driver".into()))).unwrap_err();
        assert!(err.to_string().contains("no driver"), "{err}");
        assert_eq!(resolve(DeviceRequest::Cpu, &Fixed(Ok(4))).unwrap(), ResolvedDevice::Cpu { reason: None });
    }
}
