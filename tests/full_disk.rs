//! A run whose output folder fills up, on a small size-limited file system (tmpfs; needs root to mount):
//! it fails with an error naming the path, leaves no truncated file under a final name, and `--resume` after space
//! is freed completes with the tables of an uninterrupted run. `.ci/run` runs it where mounting works.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, bytes: u64) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("mount");
        assert!(
            o.status.success(),
            "this test needs root and tmpfs: mount -t tmpfs failed: {}",
            text(&o)
        );
        Tmpfs(at.to_path_buf())
    }

    fn resize(&self, bytes: u64) {
        let o = Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(o.status.success(), "remount: {}", text(&o));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Bytes a folder's files take on a page-granular file system.
fn footprint(dir: &Path) -> u64 {
    files_under(dir)
        .iter()
        .map(|f| std::fs::metadata(dir.join(f)).unwrap().len().div_ceil(4096) * 4096)
        .sum()
}

/// A file under a final name (not a temporary one) must be whole.
fn assert_whole(full: &Path, reference: &Path, rel: &Path) {
    let name = rel.display().to_string();
    let temporary = rel.components().any(|c| {
        let c = c.as_os_str().to_string_lossy();
        c.starts_with(".tmp-") || (c.starts_with(".stage_") && c.ends_with(".tmp"))
    });
    if temporary || name.ends_with(".lock") || name.ends_with("progress.txt") {
        return;
    }
    let bytes = std::fs::read(full.join(rel)).unwrap();
    let same_as_reference = || {
        let r = std::fs::read(reference.join(rel))
            .unwrap_or_else(|e| panic!("{name}: not in the uninterrupted run ({e})"));
        assert!(
            r == bytes,
            "{name}: truncated or different under its final name"
        );
    };
    if name.ends_with(".safetensors") {
        safetensors::SafeTensors::deserialize(&bytes)
            .unwrap_or_else(|e| panic!("{name}: truncated safetensors under its final name: {e}"));
    } else if name.ends_with(".json") {
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .unwrap_or_else(|e| panic!("{name}: truncated JSON under its final name: {e}"));
        if name.ends_with("scores.json") || name.ends_with("extras.json") {
            same_as_reference();
        }
    } else if name.ends_with("done") {
        assert_eq!(bytes, b"ok\n", "{name}");
    } else if name.ends_with(".csv") && !name.contains('/') {
        // The run's tables: after a failed cell the runner writes the tables of every committed stage (results
        // that survive a crash), so a whole table may hold fewer rows (and `metrics.csv` fewer optional columns)
        // than the uninterrupted run's; each of its rows must match one of them in every column it has, and the
        // last line must be complete.
        let r = std::fs::read_to_string(reference.join(rel))
            .unwrap_or_else(|e| panic!("{name}: not in the uninterrupted run ({e})"));
        let got = String::from_utf8(bytes).unwrap();
        assert!(got.ends_with('\n'), "{name}: truncated (no final newline)");
        let rows = |t: &str| -> Vec<std::collections::BTreeMap<String, String>> {
            let mut lines = t.lines();
            let head: Vec<String> = lines
                .next()
                .unwrap_or("")
                .split(',')
                .map(String::from)
                .collect();
            lines
                .map(|l| {
                    head.iter()
                        .cloned()
                        .zip(l.split(',').map(String::from))
                        .collect()
                })
                .collect()
        };
        let want = rows(&r);
        for row in rows(&got) {
            assert!(
                want.iter()
                    .any(|w| row.iter().all(|(k, v)| w.get(k) == Some(v))),
                "{name}: a row not in the uninterrupted run: {row:?}"
            );
        }
    } else if name.ends_with(".csv") || name.ends_with(".md") || name.ends_with(".tex") {
        same_as_reference();
    } else if name.ends_with(".png") {
        image::load_from_memory(&bytes)
            .unwrap_or_else(|e| panic!("{name}: truncated PNG under its final name: {e}"));
    } else if name.ends_with(".svg") {
        assert!(
            String::from_utf8_lossy(&bytes)
                .trim_end()
                .ends_with("</svg>"),
            "{name}: truncated SVG under its final name"
        );
    } else if name.ends_with(".parquet") {
        assert!(bytes.ends_with(b"PAR1"), "{name}: truncated Parquet");
    }
}

#[test]
#[ignore = "needs root + tmpfs (mount -t tmpfs); .ci/run runs it where mounting works"]
fn a_full_disk_fails_cleanly_and_resume_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write(
        tmp.path(),
        "d.toml",
        &tiny_spec("d", &["finetune", "evosam", "replay"], 2),
    );
    let a = tmp.path().join("a");
    let o = run(&spec, &a, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let ra = a.join("d");
    let need = footprint(&ra);
    // a third of what the run writes, and at least a few pages, so that it fails in the middle
    let fs = Tmpfs::mount(
        &tmp.path().join("small"),
        (need / 3).max(64 * 1024) / 4096 * 4096,
    );
    let o = run(&spec, &fs.0, &[]);
    let t = text(&o);
    assert!(
        !o.status.success(),
        "the run fit in {} bytes: {t}",
        need / 3
    );
    assert!(
        t.contains("No space left on device") && t.contains(&fs.0.display().to_string()),
        "the error must name the path and the cause: {t}"
    );
    let rd = fs.0.join("d");
    let files = files_under(&rd);
    for f in &files {
        assert_whole(&rd, &ra, f);
    }
    eprintln!(
        "full disk at {} of {need} bytes: exit {:?}, {} files left, all whole; error: {}",
        need / 3,
        o.status.code(),
        files.len(),
        t.lines().find(|l| l.contains("No space")).unwrap_or("")
    );
    // free space, then resume
    fs.resize(need * 4 + (1 << 20));
    let o = run(&spec, &fs.0, &["--resume"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_same_results(&ra, &rd, "resumed after a full disk");
    assert!(rd.join("tables/summary.md").is_file());
}
