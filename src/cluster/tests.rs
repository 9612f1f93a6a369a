//! Script generation as `evosam submit --dry-run` does it: array size, dependencies, resources, quoting.

use super::script::{sh_quote, Job};
use super::*;
use crate::spec::Spec;
use std::path::{Path, PathBuf};

const SPEC: &str = "[experiment]\nname = \"tiny run\"\nseeds = [0, 1]\n[stream]\norders = [\"given\", \"reverse\"]\n\
    [[stream.task]]\nname = \"a\"\nsource = \"synthetic\"\nfamily = \"vessels\"\n\
    [[stream.task]]\nname = \"b\"\nsource = \"synthetic\"\nfamily = \"organs\"\n\
    [model]\nweights = \"random-tiny\"\n\
    [[strategy]]\npreset = \"zeroshot\"\n[[strategy]]\npreset = \"finetune\"\n[[strategy]]\npreset = \"ewc\"\n";

/// A spec "in" a folder with spaces and a quote in its name (the file itself is not needed for a dry run).
fn spec_at(root: &Path, extra: &str) -> Spec {
    let sdir = root.join("my specs/it's here");
    Spec::from_str_at(
        &format!("{SPEC}{extra}"),
        &sdir.join("run spec.toml"),
        &sdir,
    )
    .unwrap()
}

fn dry(root: &Path, spec: &Spec, flags: SlurmSettings) -> Submitted {
    submit(
        spec,
        &SubmitOptions {
            out: Some(root.join("results dir")),
            flags,
            dry_run: true,
            exe: Some(root.join("bin dir/evosam")),
        },
    )
    .unwrap()
}

#[test]
fn array_covers_every_cell_and_the_chain_is_afterok_then_afterany() {
    let d = tempfile::tempdir().unwrap();
    let spec = spec_at(d.path(), "");
    let s = dry(d.path(), &spec, SlurmSettings::default());
    // 3 strategies x 2 seeds x 2 orders
    assert_eq!(s.plan.cells.len(), 12);
    assert!(
        s.scripts.cells.contains("#SBATCH --array=0-11\n"),
        "{}",
        s.scripts.cells
    );
    assert_eq!(s.scripts.cells.matches("__seed").count(), 12);
    assert!(s
        .scripts
        .cells
        .contains("#SBATCH --kill-on-invalid-dep=yes"));
    assert!(s.submission.is_none());
    let c = &s.commands;
    assert_eq!(c.len(), 4);
    assert!(
        c[0].starts_with("PREPARE=$(sbatch --parsable ") && !c[0].contains("--dependency"),
        "{}",
        c[0]
    );
    assert!(
        c[1].contains("\"--dependency=afterok:$PREPARE\""),
        "{}",
        c[1]
    );
    assert!(
        c[2].contains("\"--dependency=afterany:$CELLS\""),
        "{}",
        c[2]
    );
    assert!(
        c[2].trim_end_matches(')')
            .ends_with("finalize.sh' \"$CELLS\""),
        "{}",
        c[2]
    );
    // the scripts and the submission commands are on disk, nothing else
    let sdir = d.path().join("results dir/tiny run/slurm");
    for f in [
        "prepare.sh",
        "cells.sh",
        "finalize.sh",
        "submit.sh",
        "cells.json",
    ] {
        assert!(sdir.join(f).is_file(), "{f}");
    }
    assert!(!sdir.join("submissions.json").exists());
    // status works before the prepare job has run: the cell list comes from the submission
    let st = read_status(&d.path().join("results dir/tiny run"), None, None).unwrap();
    assert_eq!(st.len(), 12);
    assert!(st
        .iter()
        .all(|c| c.stages_total == Some(3) && c.state.word() == "waiting"));
    assert_eq!(
        std::fs::read_to_string(sdir.join("cells.sh")).unwrap(),
        s.scripts.cells
    );
}

#[test]
fn resources_from_spec_and_flags() {
    let d = tempfile::tempdir().unwrap();
    let spec = spec_at(
        d.path(),
        "[slurm]\npartition = \"cpu\"\ntime = \"02:00:00\"\ncpus_per_task = 2\nmem = \"4G\"\n\
         sbatch_args = [\"--constraint=avx2\"]\n",
    );
    let flags = SlurmSettings {
        partition: Some("gpu".into()),
        gpus_per_task: Some(1),
        account: Some("lab-x".into()),
        max_parallel: Some(3),
        sbatch_args: vec!["--comment=two words".into()],
        ..Default::default()
    };
    let s = dry(d.path(), &spec, flags);
    for script in [&s.scripts.prepare, &s.scripts.cells] {
        for want in [
            "#SBATCH --partition=gpu\n",
            "#SBATCH --time=02:00:00\n",
            "#SBATCH --cpus-per-task=2\n",
            "#SBATCH --gpus-per-task=1\n",
            "#SBATCH --mem=4G\n",
            "#SBATCH --account=lab-x\n",
            "#SBATCH --constraint=avx2\n",
            "#SBATCH --comment=\"two words\"\n",
        ] {
            assert!(script.contains(want), "{want} missing in\n{script}");
        }
        assert!(!script.contains("--partition=cpu"));
    }
    assert!(s.scripts.cells.contains("#SBATCH --array=0-11%3\n"));
    // finalize collects: no GPUs, no extra CPUs
    assert!(s.scripts.finalize.contains("#SBATCH --partition=gpu\n"));
    assert!(!s.scripts.finalize.contains("gpus-per-task"));
    assert!(!s.scripts.finalize.contains("cpus-per-task"));
    // threads follow the CPUs Slurm grants
    assert!(s
        .scripts
        .cells
        .contains("RAYON_NUM_THREADS=\"${SLURM_CPUS_PER_TASK:-"));
}

#[test]
fn bad_settings_name_the_flag_or_the_spec_key() {
    let d = tempfile::tempdir().unwrap();
    let spec = spec_at(d.path(), "");
    let e = submit(
        &spec,
        &SubmitOptions {
            flags: SlurmSettings {
                time: Some("2h".into()),
                ..Default::default()
            },
            dry_run: true,
            ..Default::default()
        },
    )
    .err()
    .unwrap();
    assert!(e.to_string().starts_with("--time: \"2h\""), "{e}");
    assert_eq!(e.exit_code(), 2);
    let sdir = d.path();
    let e = Spec::from_str_at(
        &format!("{SPEC}[slurm]\nmem = \"lots\"\n"),
        &sdir.join("s.toml"),
        sdir,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("[slurm]") && e.contains("`mem`") && e.contains("line 23"),
        "{e}"
    );
    let e = Spec::from_str_at(
        &format!("{SPEC}[slurm]\nnodes = 2\n"),
        &sdir.join("s.toml"),
        sdir,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("nodes") && e.contains("line 23"), "{e}");
}

/// Run the generated scripts with bash, an evosam stand-in that prints its arguments: paths with spaces and
/// quotes arrive as single arguments, and array task i runs cell i.
#[test]
fn generated_scripts_run_under_bash_with_awkward_paths() {
    let d = tempfile::tempdir().unwrap();
    let spec = spec_at(d.path(), "");
    let exe = d.path().join("bin dir/evosam");
    std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
    std::fs::write(&exe, "#!/bin/bash\nfor a in \"$@\"; do printf '<%s>\\n' \"$a\"; done\necho \"threads=$RAYON_NUM_THREADS\"\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let s = dry(d.path(), &spec, SlurmSettings::default());
    let run = |job: Job, env: &[(&str, &str)], args: &[&str]| -> String {
        let out = std::process::Command::new("bash")
            .arg(s.plan.script_path(job))
            .args(args)
            .envs(env.iter().copied())
            .env_remove("RAYON_NUM_THREADS")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let spec_arg = format!(
        "<{}>",
        d.path().join("my specs/it's here/run spec.toml").display()
    );
    let out_arg = format!("<{}>", d.path().join("results dir").display());
    let o = run(
        Job::Cells,
        &[("SLURM_ARRAY_TASK_ID", "5"), ("SLURM_CPUS_PER_TASK", "3")],
        &[],
    );
    let want_cell = format!("<{}>", s.plan.cells[5]);
    assert_eq!(
        o.lines().collect::<Vec<_>>(),
        [
            "<run>",
            &spec_arg,
            "<--out>",
            &out_arg,
            "<--cell>",
            &want_cell,
            "threads=3"
        ]
    );
    let o = run(Job::Prepare, &[], &[]);
    assert!(
        o.contains("<--prepare>") && o.contains(&spec_arg) && o.contains("threads=1"),
        "{o}"
    );
    let o = run(Job::Finalize, &[], &["123"]);
    assert!(o.contains("<--finalize>\n<--slurm-array>\n<123>"), "{o}");
}

#[test]
fn resubmission_only_runs_unfinished_cells_and_refuses_a_changed_spec() {
    let d = tempfile::tempdir().unwrap();
    let spec = spec_at(d.path(), "");
    let dir: PathBuf = d.path().join("results dir/tiny run");
    crate::util::write_atomic(
        &dir.join("run.json"),
        format!(
            "{{\"fingerprint\": \"{}\", \"started\": \"t\"}}",
            crate::runner::spec_fingerprint(&spec)
        )
        .as_bytes(),
    )
    .unwrap();
    let cells = crate::runner::cells_of(&spec);
    // cell 0 complete (3 stages for 2 tasks), cell 1 has 2 of 3
    for (c, n) in [(0, 3), (1, 2)] {
        for k in 0..n {
            crate::util::write_atomic(
                &dir.join("cells")
                    .join(&cells[c].id)
                    .join(format!("stage_{k}/done")),
                b"ok\n",
            )
            .unwrap();
        }
    }
    let s = dry(d.path(), &spec, SlurmSettings::default());
    assert_eq!(s.finished, 1);
    assert_eq!(s.plan.array_spec(), "1-11");
    assert!(s.scripts.cells.contains("#SBATCH --array=1-11\n"));
    // indices keep meaning the same cell
    assert!(s
        .scripts
        .cells
        .contains(&format!("  {}  # 0\n", sh_quote(&cells[0].id))));

    // other Slurm settings are not a changed spec: the same run continues
    let other_resources = spec_at(d.path(), "[slurm]\npartition = \"big\"\nmem = \"64G\"\n");
    assert_eq!(
        crate::runner::spec_fingerprint(&other_resources),
        crate::runner::spec_fingerprint(&spec)
    );
    assert_eq!(
        dry(d.path(), &other_resources, SlurmSettings::default()).finished,
        1
    );

    let changed = Spec::from_str_at(
        &SPEC.replace("seeds = [0, 1]", "seeds = [0, 2]"),
        &spec.file,
        &spec.base_dir,
    )
    .unwrap();
    let e = submit(
        &changed,
        &SubmitOptions {
            out: Some(d.path().join("results dir")),
            dry_run: true,
            ..Default::default()
        },
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("the spec changed"), "{e}");
}

#[test]
fn array_spec_ranges() {
    let d = tempfile::tempdir().unwrap();
    let spec = spec_at(d.path(), "");
    let mut p = dry(d.path(), &spec, SlurmSettings::default()).plan;
    p.todo = vec![0, 1, 2, 5, 7, 8];
    assert_eq!(p.array_spec(), "0-2,5,7-8");
    p.settings.max_parallel = Some(2);
    assert_eq!(p.array_spec(), "0-2,5,7-8%2");
    p.todo.clear();
    let c = submit::commands(&p);
    assert_eq!(c.len(), 1);
    assert!(
        c[0].starts_with("sbatch --parsable ") && c[0].ends_with("finalize.sh'"),
        "{}",
        c[0]
    );
}
