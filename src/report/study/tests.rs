use super::*;
use crate::annotate::tables::CaseRow;

fn row(
    annotator: &str,
    case: &str,
    model: &str,
    seconds: f64,
    prompts: usize,
    dice: f64,
) -> CaseRow {
    CaseRow {
        annotator: annotator.into(),
        slot: 0,
        case: case.into(),
        model: model.into(),
        expert: "base".into(),
        seconds,
        n_prompts: prompts,
        n_clicks: prompts.saturating_sub(1),
        n_boxes: 1,
        n_undo: 0,
        n_clear: 0,
        final_prompts: prompts,
        final_dice: Some(dice),
    }
}

#[test]
fn box_stats_match_numpy_percentiles() {
    // numpy.percentile([1, 2, 4, 8, 16], [25, 50, 75]) = [2, 4, 8]; [1, 2, 3, 4]: [1.75, 2.5, 3.25]
    let b = BoxStat::of(&[16.0, 1.0, 4.0, 2.0, 8.0]).unwrap();
    assert_eq!(
        (b.min, b.q1, b.median, b.q3, b.max, b.mean),
        (1.0, 2.0, 4.0, 8.0, 16.0, 6.2)
    );
    let b = BoxStat::of(&[4.0, 3.0, 2.0, 1.0]).unwrap();
    assert_eq!((b.q1, b.median, b.q3), (1.75, 2.5, 3.25));
    assert!(BoxStat::of(&[]).is_none());
}

#[test]
fn pairs_per_annotator_and_pooled() {
    let models = ["evosam".to_string(), "base".to_string()];
    // annotator a: crossover on c1, c2; b: c1 under evosam only; c3 only under base (unpaired)
    let rows = vec![
        row("a", "c1", "evosam", 10.0, 2, 0.9),
        row("a", "c1", "base", 20.0, 5, 0.8),
        row("a", "c2", "evosam", 12.0, 3, 0.85),
        row("a", "c2", "base", 30.0, 6, 0.7),
        row("b", "c1", "evosam", 14.0, 2, 0.95),
        row("b", "c3", "base", 9.0, 1, 0.6),
    ];
    let r = StudyReport::compute(&rows, &models);
    assert_eq!(r.groups, ["a", "b", "all"]);
    let get = |g: &str, m: &str| {
        r.comparisons
            .iter()
            .find(|c| c.group == g && c.measure == m)
            .unwrap()
    };
    let a = get("a", "seconds");
    assert_eq!(a.n_pairs, 2);
    let w = a.wilcoxon.as_ref().unwrap();
    // differences evosam - base: -10, -18 -> W+ = 0, W- = 3
    assert_eq!((w.w_plus, w.w_minus), (0.0, 3.0));
    assert_eq!(get("b", "seconds").n_pairs, 0);
    assert!(get("b", "seconds").wilcoxon.is_none());
    // pooled: c1 evosam = mean(10, 14) = 12 vs 20; c2 12 vs 30
    let all = get("all", "seconds");
    assert_eq!(all.n_pairs, 2);
    assert_eq!(all.stats[0].as_ref().unwrap().n, 3);
    assert_eq!(all.stats[1].as_ref().unwrap().n, 3);
    let md = table::to_markdown(&r);
    assert!(md.contains("| a | Time per case (s) | 11.0 [10.5–11.5] (n=2) | 25.0 [22.5–27.5] (n=2) | 2 | 0.500 |"), "{md}");
    let csv = table::to_csv(&r);
    assert_eq!(csv.lines().count(), 1 + 3 * 3 * 2);
}

#[test]
fn a_study_folder_gets_plots_and_tables() {
    use crate::annotate::events::{log_path, Action, Event, EventLog};
    let dir = tempfile::tempdir().unwrap();
    let rec = crate::annotate::session::StudyRecord {
        format: "evosam-annotate-1".into(),
        seed: 0,
        design: crate::annotate::Design::Crossover,
        models: ["evosam".into(), "base".into()],
        cases: vec!["c1".into()],
        annotators: vec!["a".into()],
    };
    std::fs::write(
        dir.path().join("study.json"),
        serde_json::to_vec(&rec).unwrap(),
    )
    .unwrap();
    assert!(is_study(dir.path()));
    let (mut log, _) = EventLog::open(&log_path(dir.path(), "a")).unwrap();
    for (slot, model, t, d) in [(0, "evosam", 3.0, 0.9), (1, "base", 5.0, 0.7)] {
        for (action, n) in [(Action::Box, 1), (Action::Accept, 1)] {
            log.append(&Event {
                annotator: "a".into(),
                slot,
                case: "c1".into(),
                model: model.into(),
                expert: "base".into(),
                action,
                x: None,
                y: None,
                x1: None,
                y1: None,
                label: None,
                n_prompts: n,
                dice: Some(d),
                t_case_s: t,
                timestamp: String::new(),
            })
            .unwrap();
        }
    }
    let s = write_study_report(dir.path(), dir.path()).unwrap();
    let names: Vec<String> = s
        .files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "study_boxplots.svg",
        "study_boxplots.png",
        "study.md",
        "study.csv",
        "study.json",
    ] {
        assert!(names.iter().any(|n| n == want), "{names:?}");
    }
    let md = std::fs::read_to_string(dir.path().join("tables/study.md")).unwrap();
    assert!(
        md.contains(
            "| a | Dice at accept | 0.900 [0.900–0.900] (n=1) | 0.700 [0.700–0.700] (n=1) | 1 |"
        ),
        "{md}"
    );
}
