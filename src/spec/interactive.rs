//! The spec's optional `[eval.interactive]` table: settings of the simulated-clinician study that
//! [`crate::interactive`] runs (README, "Interactive study").

use serde::{Deserialize, Serialize};

use super::diag::{from_table, Diag};

/// The interaction-cost model: seconds for one image given its number of clicks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimeModel {
    /// Seconds per image (looking at it, placing the box).
    pub seconds_per_case: f64,
    /// Seconds per click.
    pub seconds_per_click: f64,
}

impl TimeModel {
    /// `seconds_per_case + seconds_per_click * clicks`.
    pub fn seconds(&self, clicks: usize) -> f64 {
        self.seconds_per_case + self.seconds_per_click * clicks as f64
    }
}

/// Which stages run the study: the last one only (default; the expensive part is one decoder pass per click per
/// test image per strategy) or every stage including zero-shot.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum StudyStages {
    /// After the last stage only.
    #[default]
    Final,
    /// After every stage, zero-shot included.
    All,
}

/// `[eval.interactive]`: the simulated-clinician study (see the README's protocol section).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InteractiveSpec {
    /// Clicks after the box (1..=100).
    #[serde(default = "d_max_clicks")]
    #[schemars(range(min = 1, max = 100))]
    pub max_clicks: usize,
    /// Dice targets τ of NoC@τ, each in (0, 1].
    #[serde(default = "d_targets")]
    #[schemars(length(min = 1), extend("uniqueItems" = true), extend("items" = {"type": "number", "exclusiveMinimum": 0, "maximum": 1}))]
    pub targets: Vec<f64>,
    /// Click counts k of Dice@k, each in 1..=max_clicks.
    #[serde(default = "d_report_at")]
    #[schemars(extend("uniqueItems" = true), inner(range(min = 1, max = 100)))]
    pub report_at: Vec<usize>,
    /// Feed the previous low-resolution logits back as SAM's mask prompt (SAM's own protocol). On by default: on
    /// Kvasir polyps it gives the zero-shot LiteMedSAM a higher Dice after 1 to 5 clicks and a higher AUC
    /// (README, "Interactive study").
    #[serde(default = "d_true")]
    pub mask_prompt: bool,
    /// "final" (default) or "all".
    #[serde(default)]
    pub stages: StudyStages,
    /// At most this many test images per task (a seeded subset, the same for every strategy); all by default.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_cases: Option<usize>,
    /// Time model `seconds = seconds_per_case + seconds_per_click * clicks`: both or neither.
    #[serde(default)]
    #[schemars(range(min = 0.0))]
    pub seconds_per_case: Option<f64>,
    /// See `seconds_per_case`.
    #[serde(default)]
    #[schemars(range(min = 0.0))]
    pub seconds_per_click: Option<f64>,
}

fn d_true() -> bool {
    true
}
fn d_max_clicks() -> usize {
    10
}
fn d_targets() -> Vec<f64> {
    vec![0.80, 0.85, 0.90]
}
fn d_report_at() -> Vec<usize> {
    vec![1, 3, 5]
}

impl Default for InteractiveSpec {
    fn default() -> Self {
        toml::Value::Table(toml::Table::new())
            .try_into()
            .expect("defaults")
    }
}

impl InteractiveSpec {
    /// Range checks; each problem names its key.
    pub fn validate(&self) -> Result<(), Diag> {
        if !(1..=100).contains(&self.max_clicks) {
            return Err(Diag::at(
                "max_clicks",
                format!("`max_clicks` = {} is out of range 1..=100", self.max_clicks),
            ));
        }
        if self.targets.is_empty() {
            return Err(Diag::at(
                "targets",
                "`targets` needs at least one Dice target",
            ));
        }
        for (i, &t) in self.targets.iter().enumerate() {
            if !(t > 0.0 && t <= 1.0) {
                return Err(Diag::at(
                    "targets",
                    format!("`targets`: {t} is not in (0, 1]"),
                ));
            }
            if self.targets[..i].contains(&t) {
                return Err(Diag::at(
                    "targets",
                    format!("`targets`: {t} is listed twice"),
                ));
            }
        }
        for (i, &k) in self.report_at.iter().enumerate() {
            if k == 0 || k > self.max_clicks {
                return Err(Diag::at(
                    "report_at",
                    format!(
                        "`report_at`: {k} is not in 1..={} (`max_clicks`)",
                        self.max_clicks
                    ),
                ));
            }
            if self.report_at[..i].contains(&k) {
                return Err(Diag::at(
                    "report_at",
                    format!("`report_at`: {k} is listed twice"),
                ));
            }
        }
        if self.max_cases == Some(0) {
            return Err(Diag::at("max_cases", "`max_cases` must be at least 1"));
        }
        match (self.seconds_per_case, self.seconds_per_click) {
            (None, None) => {}
            (Some(a), Some(b)) => {
                for (k, v) in [("seconds_per_case", a), ("seconds_per_click", b)] {
                    if !(v.is_finite() && v >= 0.0) {
                        return Err(Diag::at(k, format!("`{k}` = {v} must be a finite number >= 0")));
                    }
                }
            }
            (Some(_), None) => {
                return Err(Diag::at(
                    "seconds_per_case",
                    "`seconds_per_case` and `seconds_per_click` form the time model: give both or neither",
                ))
            }
            (None, Some(_)) => {
                return Err(Diag::at(
                    "seconds_per_click",
                    "`seconds_per_case` and `seconds_per_click` form the time model: give both or neither",
                ))
            }
        }
        Ok(())
    }

    /// The time model, when the spec gives one.
    pub fn time_model(&self) -> Option<TimeModel> {
        Some(TimeModel {
            seconds_per_case: self.seconds_per_case?,
            seconds_per_click: self.seconds_per_click?,
        })
    }

    /// Parse and validate a table (the value of `eval.interactive`); the problem names its key path.
    pub fn from_table(t: &toml::Table) -> Result<Self, Diag> {
        let s: Self = from_table(t)?;
        s.validate()?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<InteractiveSpec, String> {
        InteractiveSpec::from_table(&toml::from_str(s).unwrap())
            .map_err(|d| format!("{} @ {}", d.msg, d.path))
    }

    #[test]
    fn defaults_and_strict_validation() {
        let d = parse("").unwrap();
        assert_eq!(d, InteractiveSpec::default());
        assert_eq!(d.max_clicks, 10);
        assert_eq!(d.targets, vec![0.8, 0.85, 0.9]);
        assert_eq!(d.report_at, vec![1, 3, 5]);
        assert_eq!(d.stages, StudyStages::Final);
        assert!(d.mask_prompt);
        assert!(d.time_model().is_none());
        let s = parse(
            "max_clicks = 5\ntargets = [0.9]\nreport_at = [1, 5]\nmask_prompt = false\nstages = \"all\"\n\
             max_cases = 20\nseconds_per_case = 4.0\nseconds_per_click = 1.5",
        )
        .unwrap();
        assert_eq!(s.stages, StudyStages::All);
        assert_eq!(s.time_model().unwrap().seconds(2), 7.0);
        for (text, want) in [
            ("max_click = 3", "max_click"),
            (
                "max_clicks = 0",
                "`max_clicks` = 0 is out of range 1..=100 @ max_clicks",
            ),
            ("targets = []", "@ targets"),
            ("targets = [0.8, 1.2]", "1.2"),
            ("targets = [0.8, 0.8]", "twice"),
            ("report_at = [11]", "@ report_at"),
            ("max_clicks = 3\nreport_at = [1, 5]", "max_clicks"),
            ("report_at = [0]", "report_at"),
            ("stages = \"some\"", "some"),
            ("max_cases = 0", "max_cases"),
            ("seconds_per_case = 3.0", "both or neither"),
            (
                "seconds_per_case = -1.0\nseconds_per_click = 1.0",
                "seconds_per_case",
            ),
            (
                "mask_prompt = 1",
                "invalid type: integer `1`, expected a boolean @ mask_prompt",
            ),
            (
                "seconds_per_click = 3.0",
                "both or neither @ seconds_per_click",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
