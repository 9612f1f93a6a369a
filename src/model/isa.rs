//! Which vector instruction set the CPU kernels use, and the `EVOSAM_ISA` switch that forces one.
//!
//! The kernels (and every matrix product, `kernels::gemm`) are written so that their results are the same bits
//! whatever instruction set runs them: each output element's terms are added in one fixed order and Rust never
//! fuses or reorders float operations on its own. The switch exists to prove that on one machine: run the same
//! spec under `EVOSAM_ISA=scalar`, `avx2` and `avx512` and compare the tables (`tests/portable.rs` does).
//! It is read once, the first time a kernel runs; the binary checks it first (`Isa::from_env`) so that a value
//! the CPU cannot honour is refused with exit code 2 instead of being ignored.

use std::sync::OnceLock;

use crate::{Error, Result};

/// The environment variable that forces an instruction set.
pub const ISA_ENV: &str = "EVOSAM_ISA";

/// An instruction set the kernels are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// The baseline x86-64 build (SSE2), or the portable build off x86-64.
    Scalar,
    /// AVX2 with FMA (x86-64-v3).
    Avx2,
    /// AVX-512F with AVX2 and FMA.
    Avx512,
}

impl Isa {
    /// Every instruction set, narrowest first.
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512];

    /// The name `EVOSAM_ISA` takes (`scalar`, `avx2`, `avx512`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Parse a name as `EVOSAM_ISA` takes it.
    pub fn parse(s: &str) -> Result<Isa> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| {
                Error::input(format!(
                    "{ISA_ENV}={s:?}: unknown instruction set (expected scalar, avx2 or avx512)"
                ))
            })
    }

    /// Whether this CPU can run it.
    pub fn supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Isa::Avx2.supported() && std::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The widest instruction set this CPU has.
    pub fn detected() -> Isa {
        Isa::ALL
            .into_iter()
            .rev()
            .find(|i| i.supported())
            .unwrap_or(Isa::Scalar)
    }

    /// The instruction set `EVOSAM_ISA` asks for: `None` when it is unset or empty; an input error when it names
    /// no instruction set or one this CPU lacks.
    pub fn from_env() -> Result<Option<Isa>> {
        match std::env::var(ISA_ENV) {
            Ok(v) if !v.trim().is_empty() => {
                let isa = Isa::parse(&v)?;
                if !isa.supported() {
                    return Err(Error::input(format!(
                        "{ISA_ENV}={v}: this CPU does not support {} (it has up to {})",
                        isa.name(),
                        Isa::detected().name()
                    )));
                }
                Ok(Some(isa))
            }
            _ => Ok(None),
        }
    }

    /// The instruction set the kernels use in this process: `EVOSAM_ISA` where set and supported, else the
    /// widest this CPU has (fixed at the first call).
    pub fn active() -> Isa {
        static ACTIVE: OnceLock<Isa> = OnceLock::new();
        *ACTIVE.get_or_init(|| Isa::from_env().ok().flatten().unwrap_or_else(Isa::detected))
    }
}

/// The environment variable that picks the arithmetic of matrix products ([`Numerics`]).
pub const NUMERICS_ENV: &str = "EVOSAM_NUMERICS";

/// How matrix products are computed on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Numerics {
    /// The crate's own gemm: each output's terms added in one fixed order, so results are the same bits on
    /// every x86-64 CPU, instruction set and thread count (the default).
    Portable,
    /// The `gemm` crate behind candle's matmul: its microkernel and cache blocking follow the CPU, so the last
    /// bits (and, through training, the tables) differ between machines.
    Fast,
}

impl Numerics {
    /// The name `EVOSAM_NUMERICS` takes.
    pub fn name(self) -> &'static str {
        match self {
            Numerics::Portable => "portable",
            Numerics::Fast => "fast",
        }
    }

    /// `EVOSAM_NUMERICS` (`portable` when unset or empty); an input error for any other value.
    pub fn from_env() -> Result<Numerics> {
        match std::env::var(NUMERICS_ENV) {
            Ok(v) if !v.trim().is_empty() => match v.trim() {
                "portable" => Ok(Numerics::Portable),
                "fast" => Ok(Numerics::Fast),
                _ => Err(Error::input(format!(
                    "{NUMERICS_ENV}={v:?}: expected portable or fast"
                ))),
            },
            _ => Ok(Numerics::Portable),
        }
    }

    /// The mode of this process (fixed at the first call).
    pub fn active() -> Numerics {
        static ACTIVE: OnceLock<Numerics> = OnceLock::new();
        *ACTIVE.get_or_init(|| Numerics::from_env().unwrap_or(Numerics::Portable))
    }
}

/// The CPU's model name (from `/proc/cpuinfo` where it exists), for the manifest.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// The vector features of this CPU that matter to the kernels, e.g. `["avx2", "fma", "avx512f"]`.
pub fn cpu_features() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => {$(if std::is_x86_feature_detected!($f) { v.push($f); })*};
        }
        probe!("sse4.2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl");
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_names_are_input_errors() {
        for isa in Isa::ALL {
            assert_eq!(Isa::parse(isa.name()).unwrap(), isa);
        }
        assert_eq!(Isa::parse(" AVX2 ").unwrap(), Isa::Avx2);
        let e = Isa::parse("sse9").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("EVOSAM_ISA"), "{e}");
        assert!(Isa::Scalar.supported());
        assert!(Isa::detected().supported());
    }
}
