//! Tests of the results tables: the matrix and metrics computed by hand, the writers, and every table's round
//! trip through CSV and Parquet.

use super::schema::assert_round_trip;
use super::*;
use polars::prelude::*;

fn row(strategy: &str, stage: i64, j: i64, case: &str, dice: f64) -> ScoreRow {
    ScoreRow {
        strategy: strategy.into(),
        seed: 0,
        order: "given".into(),
        stage,
        trained_task: if stage == 0 {
            String::new()
        } else {
            format!("t{stage}")
        },
        eval_task: format!("t{j}"),
        eval_index: j,
        case: case.into(),
        dice,
        nsd: Some(dice * 0.9),
        hd95: Some(10.0 * (1.0 - dice)),
        routed_to: None,
        novelty: None,
    }
}

#[test]
fn matrix_and_metrics_from_scores() {
    // two tasks, two cases each; R = [[.2,.4],[.8,.5],[.6,.9]] as case means
    let mut rows = Vec::new();
    for (k, vals) in [
        (0, [0.1, 0.3, 0.4, 0.4]),
        (1, [0.8, 0.8, 0.4, 0.6]),
        (2, [0.5, 0.7, 1.0, 0.8]),
    ] {
        rows.push(row("ft", k, 1, "a", vals[0]));
        rows.push(row("ft", k, 1, "b", vals[1]));
        rows.push(row("ft", k, 2, "c", vals[2]));
        rows.push(row("ft", k, 2, "d", vals[3]));
    }
    let m = matrix_rows(&rows);
    assert_eq!(m.len(), 6);
    assert_eq!(m[0].n_cases, 2);
    let want = [0.2, 0.4, 0.8, 0.5, 0.6, 0.9];
    for (r, w) in m.iter().zip(want) {
        assert!((r.dice - w).abs() < 1e-12, "{r:?}");
    }
    let mut df = MetricsRow::frame(&metrics_rows(&m, &rows, &[], 2).unwrap()).unwrap();
    assert_eq!(df.height(), 1);
    let acc = df.column("acc").unwrap().f64().unwrap().get(0).unwrap();
    assert!((acc - 0.75).abs() < 1e-12);
    let bwt = df.column("bwt").unwrap().f64().unwrap().get(0).unwrap();
    assert!((bwt - (0.6 - 0.8)).abs() < 1e-12);
    let fwt = df.column("fwt").unwrap().f64().unwrap().get(0).unwrap();
    assert!((fwt - (0.5 - 0.4)).abs() < 1e-12);
    // routed rows give matcher_acc
    for r in rows.iter_mut().filter(|r| r.stage == 2) {
        r.routed_to = Some(if r.case == "d" {
            "t1".into()
        } else {
            r.eval_task.clone()
        });
    }
    let extras = vec![ExtraRow {
        strategy: "ft".into(),
        seed: 0,
        order: "given".into(),
        stage: 2,
        key: "n_experts".into(),
        value: 2.0,
    }];
    df = MetricsRow::frame(&metrics_rows(&m, &rows, &extras, 2).unwrap()).unwrap();
    let ma = df
        .column("matcher_acc")
        .unwrap()
        .f64()
        .unwrap()
        .get(0)
        .unwrap();
    assert!((ma - 0.75).abs() < 1e-12);
    assert_eq!(
        df.column("n_experts").unwrap().f64().unwrap().get(0),
        Some(2.0)
    );
    // an incomplete cell gets no metrics row
    let part: Vec<ScoreRow> = rows.iter().filter(|r| r.stage < 2).cloned().collect();
    assert!(metrics_rows(&matrix_rows(&part), &part, &[], 2)
        .unwrap()
        .is_empty());
}

#[test]
fn tables_round_trip_and_atomic_writes() {
    let dir = tempfile::tempdir().unwrap();
    let rows = vec![
        row("zs", 0, 1, "a", 0.123456789012345),
        row("zs", 1, 1, "a", 1.0 / 3.0),
    ];
    write_tables(dir.path(), &rows, &[], 1).unwrap();
    for f in [
        "scores.parquet",
        "scores.csv",
        "matrix.csv",
        "metrics.csv",
        "extras.csv",
    ] {
        assert!(dir.path().join(f).is_file(), "{f}");
    }
    // parquet round trip is exact
    let f = std::fs::File::open(dir.path().join("scores.parquet")).unwrap();
    let df = ParquetReader::new(f).finish().unwrap();
    let d: Vec<f64> = df
        .column("dice")
        .unwrap()
        .f64()
        .unwrap()
        .into_no_null_iter()
        .collect();
    assert_eq!(d, vec![0.123456789012345, 1.0 / 3.0]);
    assert_eq!(df.column("routed_to").unwrap().null_count(), 2);
    let csv = std::fs::read_to_string(dir.path().join("scores.csv")).unwrap();
    assert!(
        csv.starts_with(
            "strategy,seed,order,stage,trained_task,eval_task,eval_index,case,dice,nsd,hd95,routed_to"
        ),
        "{csv}"
    );
    assert!(csv.contains("0.123456789012345"), "{csv}");
    let metrics = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    assert!(
        metrics.starts_with("strategy,seed,order,acc,bwt,fwt,forgetting\n"),
        "{metrics}"
    );

    // atomic write: replaces the whole file and leaves no temporary files behind
    let p = dir.path().join("x.txt");
    write_atomic(&p, b"first").unwrap();
    write_atomic(&p, b"second").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"second");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());
    // a failed write (target is a folder) leaves the old content alone
    std::fs::create_dir(dir.path().join("d")).unwrap();
    assert!(write_atomic(&dir.path().join("d"), b"x").is_err());
}

#[test]
fn checkpoint_rows_keep_exact_bits() {
    let r = row("zs", 0, 1, "a", 0.1 + 0.2);
    let j = serde_json::to_string(&r).unwrap();
    let back: ScoreRow = serde_json::from_str(&j).unwrap();
    assert_eq!(back.dice.to_bits(), r.dice.to_bits());
}

#[test]
fn folder_lock_refuses_live_owner_and_takes_stale() {
    let dir = tempfile::tempdir().unwrap();
    let l = FolderLock::acquire(dir.path()).unwrap();
    // our own pid is alive: a second acquire fails
    assert!(FolderLock::acquire(dir.path()).is_err());
    drop(l);
    assert!(!dir.path().join(".lock").exists());
    // stale lock (no such pid) is taken over
    std::fs::write(dir.path().join(".lock"), "4294967\n").unwrap();
    let _l = FolderLock::acquire(dir.path()).unwrap();
}

/// Every results table through CSV and Parquet and back: the same rows (exact floats, nulls, empty strings, a
/// case id with leading zeros), and the header the declaration's columns.
#[test]
fn every_table_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let mut scores = vec![
        row("zs", 0, 1, "007", 0.123456789012345),
        row("evosam", 1, 2, "b", 1.0 / 3.0),
    ];
    scores[1].routed_to = Some("t2".into());
    scores[1].novelty = Some(-2.5e-7);
    scores[0].hd95 = None;
    let text = assert_round_trip(dir.path(), "scores", &scores);
    assert!(text.starts_with(&ScoreRow::COLUMNS.join(",")), "{text}");
    let m = matrix_rows(&scores);
    assert_round_trip(dir.path(), "matrix", &m);
    let extras = vec![ExtraRow {
        strategy: "evosam".into(),
        seed: 3,
        order: "rev".into(),
        stage: 2,
        key: "n_experts".into(),
        value: 0.1 + 0.2,
    }];
    assert_round_trip(dir.path(), "extras", &extras);
    let metrics = vec![
        MetricsRow {
            strategy: "ft".into(),
            seed: 0,
            order: "given".into(),
            acc: 0.7,
            bwt: -1e-3,
            fwt: None,
            forgetting: 0.25,
            extra: [
                ("matcher_acc".to_string(), None),
                ("n_experts".to_string(), Some(1.0)),
            ]
            .into(),
        },
        MetricsRow {
            strategy: "evosam".into(),
            seed: 1,
            order: "given".into(),
            acc: 2.0 / 3.0,
            bwt: 0.0,
            fwt: Some(0.125),
            forgetting: 0.0,
            extra: [
                ("matcher_acc".to_string(), Some(0.75)),
                ("n_experts".to_string(), Some(2.0)),
            ]
            .into(),
        },
    ];
    let text = assert_round_trip(dir.path(), "metrics", &metrics);
    assert!(
        text.starts_with("strategy,seed,order,acc,bwt,fwt,forgetting,matcher_acc,n_experts\n"),
        "{text}"
    );
    // a column added to a table shows up in its columns, frame, files and reader
    assert_eq!(
        ScoreRow::frame(&scores).unwrap().get_column_names().len(),
        ScoreRow::COLUMNS.len()
    );
    // files of older versions without the optional columns read as None
    let old = dir.path().join("old.csv");
    std::fs::write(
        &old,
        "strategy,seed,order,stage,trained_task,eval_task,eval_index,case,dice,routed_to\nzs,0,given,0,,t1,1,007,0.5,\n",
    )
    .unwrap();
    let back = ScoreRow::read(&old).unwrap();
    assert_eq!(
        (back[0].nsd, back[0].novelty, back[0].routed_to.clone()),
        (None, None, None)
    );
    assert_eq!(
        (back[0].trained_task.as_str(), back[0].case.as_str()),
        ("", "007")
    );
    // a missing required column is an input error naming it
    std::fs::write(&old, "strategy,seed,order\nzs,0,given\n").unwrap();
    let e = ScoreRow::read(&old).unwrap_err().to_string();
    assert!(
        e.contains("missing column(s) stage") && e.contains("old.csv"),
        "{e}"
    );
}

#[test]
fn matcher_acc_by_hand() {
    let mut rows = vec![
        row("e", 2, 1, "a", 0.5),
        row("e", 2, 2, "b", 0.5),
        row("e", 1, 1, "a", 0.5),
    ];
    let cell = CellKey::new("e", 0, "given");
    assert_eq!(
        matcher_acc(&rows, &cell, 2),
        None,
        "a strategy that does not route"
    );
    rows[0].routed_to = Some("t1".into());
    rows[1].routed_to = Some("t1".into());
    rows[2].routed_to = Some("t2".into());
    assert_eq!(matcher_acc(&rows, &cell, 2), Some(0.5));
    assert_eq!(matcher_acc(&rows, &cell, 1), Some(0.0));
    assert_eq!(matcher_acc(&rows, &CellKey::new("e", 1, "given"), 2), None);
}
