//! `[slurm]`: the optional Slurm settings of a spec, also the type of the `evosam submit` flags (merged, flags
//! win). Validated when the spec is read, so that a typo fails with the key's name rather than in `sbatch`
//! minutes later. Not part of the results: `crate::cluster` uses them, the runner does not.

use serde::{Deserialize, Serialize};

/// Resources and site options for the jobs of one submission. Every field is optional: Slurm's (and the site's)
/// defaults apply to what is left out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlurmSettings {
    /// `--partition`: one partition or a comma-separated list.
    #[serde(default)]
    pub partition: Option<String>,
    /// `--time` per job: `MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM` or `D-HH:MM:SS`.
    #[serde(default)]
    pub time: Option<String>,
    /// `--cpus-per-task` of the prepare and cell jobs; also the cell's compute threads.
    #[serde(default)]
    pub cpus_per_task: Option<u32>,
    /// `--mem` per job: a number with an optional K/M/G/T suffix (megabytes without one).
    #[serde(default)]
    pub mem: Option<String>,
    /// `--gpus-per-task` of the prepare and cell jobs (the finalize job needs none).
    #[serde(default)]
    pub gpus_per_task: Option<u32>,
    /// `--account` of every job.
    #[serde(default)]
    pub account: Option<String>,
    /// `--qos` of every job.
    #[serde(default)]
    pub qos: Option<String>,
    /// At most this many cells run at once (`--array=...%K`).
    #[serde(default)]
    pub max_parallel: Option<u32>,
    /// Further `sbatch` options, one per entry, written as `#SBATCH` lines into every job script
    /// (e.g. `"--constraint=a100"`, `"--exclusive"`).
    #[serde(default)]
    pub sbatch_args: Vec<String>,
}

/// A setting that does not pass validation: the key (or flag) and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingError {
    /// The key (or flag) at fault.
    pub key: &'static str,
    /// What is wrong with it.
    pub msg: String,
}

impl SlurmSettings {
    /// Nothing set (the spec has no `[slurm]` table).
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// `self` (the spec's table) overridden by `flags`; `sbatch_args` of both are kept, the spec's first, so a
    /// flag repeated on the command line wins (`sbatch` takes the last value of an option).
    pub fn merged_with(&self, flags: &SlurmSettings) -> SlurmSettings {
        SlurmSettings {
            partition: flags.partition.clone().or_else(|| self.partition.clone()),
            time: flags.time.clone().or_else(|| self.time.clone()),
            cpus_per_task: flags.cpus_per_task.or(self.cpus_per_task),
            mem: flags.mem.clone().or_else(|| self.mem.clone()),
            gpus_per_task: flags.gpus_per_task.or(self.gpus_per_task),
            account: flags.account.clone().or_else(|| self.account.clone()),
            qos: flags.qos.clone().or_else(|| self.qos.clone()),
            max_parallel: flags.max_parallel.or(self.max_parallel),
            sbatch_args: self
                .sbatch_args
                .iter()
                .chain(&flags.sbatch_args)
                .cloned()
                .collect(),
        }
    }

    /// Check every value; the first problem is returned with its key.
    pub fn validate(&self) -> Result<(), SettingError> {
        let err = |key: &'static str, msg: String| Err(SettingError { key, msg });
        for (key, v) in [
            ("partition", &self.partition),
            ("account", &self.account),
            ("qos", &self.qos),
        ] {
            if let Some(v) = v {
                if v.is_empty()
                    || !v
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.,:+".contains(c))
                {
                    return err(
                        key,
                        format!("{v:?} is not a Slurm name (letters, digits and _-.,:+ only)"),
                    );
                }
            }
        }
        if let Some(t) = &self.time {
            if !valid_time(t) {
                return err(
                    "time",
                    format!(
                        "{t:?} is not a Slurm time limit (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS)"
                    ),
                );
            }
        }
        if let Some(m) = &self.mem {
            if !valid_mem(m) {
                return err(
                    "mem",
                    format!("{m:?} is not a memory size (a number with an optional K, M, G or T suffix)"),
                );
            }
        }
        for (key, v) in [
            ("cpus_per_task", self.cpus_per_task),
            ("max_parallel", self.max_parallel),
        ] {
            if v == Some(0) {
                return err(key, "must be at least 1".into());
            }
        }
        for a in &self.sbatch_args {
            if !a.starts_with('-') || a.len() < 2 {
                return err(
                    "sbatch_args",
                    format!("{a:?} is not an sbatch option (options start with - or --)"),
                );
            }
            if a.chars().any(|c| c.is_control()) {
                return err(
                    "sbatch_args",
                    format!("{a:?} contains a control character (newline, tab, ...)"),
                );
            }
            // these are evosam's to set: the dependency chain, the array and the log paths depend on them
            let name = a
                .trim_start_matches('-')
                .split(['=', ' '])
                .next()
                .unwrap_or("");
            if [
                "array",
                "dependency",
                "d",
                "a",
                "output",
                "o",
                "error",
                "e",
                "parsable",
                "wrap",
            ]
            .contains(&name)
            {
                return err(
                    "sbatch_args",
                    format!("{a:?}: evosam sets --{name} itself (job chain, array and log paths)"),
                );
            }
        }
        Ok(())
    }

    /// The `#SBATCH` resource lines for one job (`gpus`: whether GPUs are requested for it).
    pub fn directives(&self, with_compute: bool) -> Vec<String> {
        let mut d = Vec::new();
        if let Some(p) = &self.partition {
            d.push(format!("--partition={p}"));
        }
        if let Some(t) = &self.time {
            d.push(format!("--time={t}"));
        }
        if with_compute {
            if let Some(c) = self.cpus_per_task {
                d.push(format!("--cpus-per-task={c}"));
            }
            if let Some(g) = self.gpus_per_task {
                d.push(format!("--gpus-per-task={g}"));
            }
        }
        if let Some(m) = &self.mem {
            d.push(format!("--mem={m}"));
        }
        if let Some(a) = &self.account {
            d.push(format!("--account={a}"));
        }
        if let Some(q) = &self.qos {
            d.push(format!("--qos={q}"));
        }
        d.extend(self.sbatch_args.iter().cloned());
        d
    }
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit())
}

/// Slurm's time formats (see `man sbatch`, `--time`).
fn valid_time(t: &str) -> bool {
    let (days, rest) = match t.split_once('-') {
        Some((d, r)) => (Some(d), r),
        None => (None, t),
    };
    if days.is_some_and(|d| !all_digits(d)) {
        return false;
    }
    let parts: Vec<&str> = rest.split(':').collect();
    if !parts.iter().all(|p| all_digits(p)) {
        return false;
    }
    match (days.is_some(), parts.len()) {
        (false, 1..=3) => true, // MM, MM:SS, HH:MM:SS
        (true, 1..=3) => true,  // D-HH, D-HH:MM, D-HH:MM:SS
        _ => false,
    }
}

fn valid_mem(m: &str) -> bool {
    let num = m
        .strip_suffix(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't'])
        .unwrap_or(m);
    all_digits(num) && num.bytes().any(|b| b != b'0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_table_parses_and_rejects_unknown_keys() {
        let s: SlurmSettings = toml::from_str(
            "partition = \"gpu\"\ntime = \"1-02:00:00\"\ncpus_per_task = 4\nmem = \"16G\"\n\
             gpus_per_task = 1\nmax_parallel = 8\nsbatch_args = [\"--constraint=a100\"]\n",
        )
        .unwrap();
        assert_eq!(s.partition.as_deref(), Some("gpu"));
        assert_eq!(s.max_parallel, Some(8));
        s.validate().unwrap();
        let e = toml::from_str::<SlurmSettings>("partiton = \"gpu\"\n")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("partiton"), "{e}");
    }

    #[test]
    fn flags_override_the_spec_and_args_accumulate() {
        let spec = SlurmSettings {
            partition: Some("cpu".into()),
            time: Some("01:00:00".into()),
            sbatch_args: vec!["--exclusive".into()],
            ..Default::default()
        };
        let flags = SlurmSettings {
            partition: Some("gpu".into()),
            sbatch_args: vec!["--constraint=a100".into()],
            ..Default::default()
        };
        let m = spec.merged_with(&flags);
        assert_eq!(m.partition.as_deref(), Some("gpu"));
        assert_eq!(m.time.as_deref(), Some("01:00:00"));
        assert_eq!(m.sbatch_args, ["--exclusive", "--constraint=a100"]);
    }

    #[test]
    fn bad_values_name_their_key() {
        let bad = |s: SlurmSettings| s.validate().err().unwrap().key;
        let d = SlurmSettings::default;
        for t in ["1-2-3", "1:2:3:4", "ab", "", "1h", "-5"] {
            assert_eq!(
                bad(SlurmSettings {
                    time: Some(t.into()),
                    ..d()
                }),
                "time",
                "{t}"
            );
        }
        for t in ["30", "30:00", "12:00:00", "2-00", "2-12:30", "2-12:30:00"] {
            SlurmSettings {
                time: Some(t.into()),
                ..d()
            }
            .validate()
            .unwrap();
        }
        for m in ["16GB", "0", "G", "-1G", "1.5G"] {
            assert_eq!(
                bad(SlurmSettings {
                    mem: Some(m.into()),
                    ..d()
                }),
                "mem",
                "{m}"
            );
        }
        assert_eq!(
            bad(SlurmSettings {
                partition: Some("a b".into()),
                ..d()
            }),
            "partition"
        );
        assert_eq!(
            bad(SlurmSettings {
                max_parallel: Some(0),
                ..d()
            }),
            "max_parallel"
        );
        for a in [
            "constraint=a100",
            "--array=0-3",
            "-o x",
            "--x\nrm -rf /",
            "--dependency=afterok:1",
        ] {
            assert_eq!(
                bad(SlurmSettings {
                    sbatch_args: vec![a.into()],
                    ..d()
                }),
                "sbatch_args",
                "{a}"
            );
        }
    }

    #[test]
    fn finalize_gets_no_compute_resources() {
        let s = SlurmSettings {
            partition: Some("gpu".into()),
            cpus_per_task: Some(8),
            gpus_per_task: Some(1),
            mem: Some("32G".into()),
            ..Default::default()
        };
        assert_eq!(
            s.directives(true),
            [
                "--partition=gpu",
                "--cpus-per-task=8",
                "--gpus-per-task=1",
                "--mem=32G"
            ]
        );
        assert_eq!(s.directives(false), ["--partition=gpu", "--mem=32G"]);
    }
}
