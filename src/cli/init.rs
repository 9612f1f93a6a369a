//! `evosam init [DIR] [--out SPEC] [--force]`: write a commented starter spec. Given a data folder it detects the
//! layout (image/mask folders paired by file stem, NIfTI volumes with label volumes, sub-folders as sites) and
//! proposes one task per site with a seeded split; without one it writes the quickstart template. The spec is
//! validated (data included) before it is written, and an existing file is kept unless `--force`.

use evosam::spec::Spec;
use evosam::Error;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Data folder to detect tasks in (none: the quickstart template on synthetic data).
    pub dir: Option<PathBuf>,
    /// Spec file to write.
    #[arg(long, default_value = "experiment.toml")]
    pub out: PathBuf,
    /// Overwrite an existing spec file.
    #[arg(long)]
    pub force: bool,
}

const IMAGE_EXT: [&str; 8] = ["png", "jpg", "jpeg", "tif", "tiff", "bmp", "gif", "ppm"];
/// Folder names of segmentations, most specific first (a `masks` folder beside a label folder is a field of view).
const LABEL_DIRS: [&str; 7] = [
    "label",
    "gt",
    "manual",
    "seg",
    "annotation",
    "mask",
    "target",
];
/// Stem endings of NIfTI label volumes stored beside their images.
const LABEL_SUFFIXES: [&str; 7] = [
    "_Segmentation",
    "_segmentation",
    "_seg",
    "_label",
    "_labels",
    "_mask",
    "_gt",
];

fn files(d: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(d)
        .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn name(p: &Path) -> String {
    p.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

fn is_nifti(p: &Path) -> bool {
    let n = name(p);
    n.ends_with(".nii") || n.ends_with(".nii.gz")
}

fn nifti_stem(p: &Path) -> String {
    let n = name(p);
    n.trim_end_matches(".gz")
        .trim_end_matches(".nii")
        .to_string()
}

/// The most common image extension of a folder's files, if it has images.
fn image_ext(d: &Path) -> Option<String> {
    let mut counts: Vec<(usize, String)> = Vec::new();
    for f in files(d).iter().filter(|f| f.is_file()) {
        let e = f
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if IMAGE_EXT.contains(&e.as_str()) {
            let raw = f.extension().unwrap().to_string_lossy().into_owned();
            match counts.iter_mut().find(|(_, x)| *x == raw) {
                Some(c) => c.0 += 1,
                None => counts.push((1, raw)),
            }
        }
    }
    counts.sort();
    counts.pop().map(|(_, e)| e)
}

fn stems(d: &Path, ext: &str) -> Vec<String> {
    files(d)
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == ext))
        .filter_map(|f| f.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect()
}

/// The common prefix and suffix of the stems, cut at a separator (`Image_`, `_1stHO`): what `strip` removes.
fn affixes(stems: &[String]) -> Vec<String> {
    let Some(first) = stems.first() else {
        return Vec::new();
    };
    if stems.len() < 2 {
        return Vec::new();
    }
    let mut pre = first.clone();
    let mut suf = first.clone();
    for s in stems {
        while !s.starts_with(&pre) {
            pre.pop();
        }
        while !s.ends_with(&suf) {
            suf.remove(0);
        }
    }
    let sep = |c: char| "_-. ".contains(c);
    let pre = match pre.rfind(sep) {
        Some(i) => pre[..=i].to_string(),
        None => String::new(),
    };
    let suf = match suf.find(sep) {
        Some(i) => suf[i..].to_string(),
        None => String::new(),
    };
    [pre, suf].into_iter().filter(|s| !s.is_empty()).collect()
}

/// One proposed task: its name and the TOML lines of its source.
struct Task {
    name: String,
    lines: Vec<String>,
    what: String,
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn list(v: &[String]) -> String {
    toml::Value::Array(v.iter().map(|s| toml::Value::String(s.clone())).collect()).to_string()
}

/// Image/mask folders under `d` (paired by stem), if any.
fn folder_task(d: &Path, task: &str) -> Option<Task> {
    let subdirs: Vec<PathBuf> = files(d).into_iter().filter(|p| p.is_dir()).collect();
    let with_images: Vec<(PathBuf, String)> = subdirs
        .iter()
        .filter_map(|s| image_ext(s).map(|e| (s.clone(), e)))
        .collect();
    let is = |p: &Path, words: &[&str]| {
        let n = name(p).to_lowercase();
        words.iter().any(|w| n.contains(w))
    };
    let (img, img_ext) = with_images
        .iter()
        .find(|(p, _)| is(p, &["image", "img", "input"]))?
        .clone();
    let mut label = None;
    for w in LABEL_DIRS {
        if let Some(x) = with_images.iter().find(|(p, _)| *p != img && is(p, &[w])) {
            label = Some(x.clone());
            break;
        }
    }
    let (lab, lab_ext) = label?;
    let fov = with_images
        .iter()
        .find(|(p, _)| *p != img && *p != lab && is(p, &["mask", "fov"]))
        .cloned();
    let mut strip = affixes(&stems(&img, &img_ext));
    strip.extend(affixes(&stems(&lab, &lab_ext)));
    if let Some((f, e)) = &fov {
        strip.extend(affixes(&stems(f, e)));
    }
    strip.dedup();
    let mut lines = vec![
        "source = \"folder\"".to_string(),
        format!("root = {}", quote(&d.display().to_string())),
        format!("images = {}", quote(&format!("{}/*.{img_ext}", name(&img)))),
        format!("masks = {}", quote(&format!("{}/*.{lab_ext}", name(&lab)))),
    ];
    if let Some((f, e)) = &fov {
        lines.push(format!("fov = {}", quote(&format!("{}/*.{e}", name(f)))));
    }
    if !strip.is_empty() {
        lines.push(format!("strip = {}", list(&strip)));
    }
    lines.push("test_fraction = 0.3".into());
    lines.push("split_seed = 0".into());
    Some(Task {
        name: task.into(),
        what: format!(
            "images in {}/, masks in {}/{}, paired by file stem",
            name(&img),
            name(&lab),
            fov.as_ref()
                .map(|(f, _)| format!(", field of view in {}/", name(f)))
                .unwrap_or_default()
        ),
        lines,
    })
}

/// NIfTI volumes in `d` with label volumes beside them (`Case00_Segmentation.nii.gz`) or in a labels folder.
fn nifti_task(d: &Path, task: &str) -> Option<Task> {
    let vols: Vec<PathBuf> = files(d).into_iter().filter(|p| is_nifti(p)).collect();
    let gz = |v: &[PathBuf]| {
        if v.iter().all(|p| name(p).ends_with(".gz")) {
            ".nii.gz"
        } else {
            ".nii"
        }
    };
    let common = |lines: &mut Vec<String>| {
        lines.push("test_fraction = 0.3".into());
        lines.push("split_seed = 0".into());
    };
    if !vols.is_empty() {
        let suffix = LABEL_SUFFIXES
            .iter()
            .find(|s| vols.iter().any(|v| nifti_stem(v).ends_with(*s)))?;
        let ext = gz(&vols);
        let mut lines = vec![
            "source = \"nifti\"".to_string(),
            format!("root = {}", quote(&d.display().to_string())),
            format!("images = {}", quote(&format!("*{ext}"))),
            format!("labels = {}", quote(&format!("*{suffix}{ext}"))),
            format!("strip = {}", list(&[suffix.to_string()])),
        ];
        common(&mut lines);
        return Some(Task {
            name: task.into(),
            what: format!("NIfTI volumes with label volumes named *{suffix}{ext}"),
            lines,
        });
    }
    // images/ + labels/ folders of volumes paired by stem (nnU-Net's imagesTr / labelsTr)
    let subdirs: Vec<PathBuf> = files(d).into_iter().filter(|p| p.is_dir()).collect();
    let vol_dir = |words: &[&str]| {
        subdirs
            .iter()
            .find(|s| {
                let n = name(s).to_lowercase();
                words.iter().any(|w| n.contains(w)) && files(s).iter().any(|f| is_nifti(f))
            })
            .cloned()
    };
    let img = vol_dir(&["image", "img"])?;
    let lab = vol_dir(&["label", "seg", "mask", "gt"])?;
    let ext = gz(&files(&img)
        .into_iter()
        .filter(|p| is_nifti(p))
        .collect::<Vec<_>>());
    let mut lines = vec![
        "source = \"nifti\"".to_string(),
        format!("root = {}", quote(&d.display().to_string())),
        format!("images = {}", quote(&format!("{}/*{ext}", name(&img)))),
        format!("labels = {}", quote(&format!("{}/*{ext}", name(&lab)))),
    ];
    common(&mut lines);
    Some(Task {
        name: task.into(),
        what: format!(
            "NIfTI volumes in {}/ with label volumes in {}/",
            name(&img),
            name(&lab)
        ),
        lines,
    })
}

fn task_at(d: &Path, task: &str) -> Option<Task> {
    nifti_task(d, task).or_else(|| folder_task(d, task))
}

/// Tasks of a data folder: the folder itself, else each sub-folder as a site.
fn detect(dir: &Path) -> evosam::Result<Vec<Task>> {
    let base = name(dir);
    if let Some(t) = task_at(dir, if base.is_empty() { "task" } else { &base }) {
        return Ok(vec![t]);
    }
    let sites: Vec<Task> = files(dir)
        .into_iter()
        .filter(|p| p.is_dir())
        .filter_map(|s| task_at(&s, &name(&s)))
        .collect();
    if sites.is_empty() {
        return Err(Error::input(format!(
            "{}: no layout found (image and mask folders paired by file stem, NIfTI volumes with label volumes, \
             or sub-folders of either as sites); write the tasks by hand (docs/spec.md) or start from `evosam init` \
             without a folder",
            dir.display()
        )));
    }
    Ok(sites)
}

/// The `#:schema` line of a spec written to `out`: the schema of the checkout this binary was built from, as a
/// path relative to the spec's folder (what the shipped specs do; the spec then moves with the checkout), or
/// absolute when they share no folder. None when the schema is not there (an installed binary): the spec then
/// says how to make one.
fn schema_line(out: &Path) -> String {
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/evosam.schema.json");
    if !schema.is_file() {
        return "# editor completion: `evosam schema > evosam.schema.json`, then a first line \
                `#:schema evosam.schema.json`\n"
            .to_string();
    }
    let folder = std::path::absolute(out)
        .ok()
        .and_then(|o| o.parent().map(Path::to_path_buf));
    let shown = folder
        .and_then(|f| relative_to(&schema, &f))
        .unwrap_or(schema);
    format!("#:schema {}\n", shown.display())
}

/// `path` relative to the folder `from` (both absolute), through their deepest common folder; None when they
/// share nothing but the root.
fn relative_to(path: &Path, from: &Path) -> Option<PathBuf> {
    let (p, f): (Vec<_>, Vec<_>) = (path.components().collect(), from.components().collect());
    let common = p.iter().zip(&f).take_while(|(a, b)| a == b).count();
    if common <= 1 {
        return None;
    }
    let mut rel = PathBuf::new();
    for _ in common..f.len() {
        rel.push("..");
    }
    rel.extend(&p[common..]);
    Some(rel)
}

fn spec_text(name: &str, dir: &Path, tasks: &[Task], out: &Path) -> String {
    let mut s = schema_line(out);
    s.push_str(&format!(
        "# Starter spec written by `evosam init` for {} (reference: docs/spec.md; check it with\n\
         # `evosam validate`, see what will run with `evosam validate --resolved`).\n\n\
         [experiment]\nname = {}\nseeds = [0]\noutput = \"results\"\ndevice = \"cpu\"   # or \"cuda:0\"\n\n\
         [stream]\norders = [\"given\"]   # add \"reverse\" or permutations of the task names\n",
        dir.display(),
        quote(name)
    ));
    for t in tasks {
        s.push_str(&format!(
            "\n# {}; a seeded 30% of the cases is the test set (or set test_ids / test_glob)\n[[stream.task]]\nname = {}\n{}\n",
            t.what,
            quote(&t.name),
            t.lines.join("\n")
        ));
    }
    s.push_str(
        "\n[model]\nweights = \"lite_medsam\"\nfreeze_encoder = true\n\n[model.lora]\nrank = 4\nalpha = 4.0\n\
         targets = [\"mask_decoder\"]\n\n\
         # A quarter of each task's training images is held out to choose each task's best epoch.\n\
         [train]\nepochs = 4\nbatch_size = 4\nlr = 3e-3\nval_fraction = 0.25\n\n\
         # The built-in presets (baselines/<preset>.toml; override any of their keys in the entry):\n\
         #   zeroshot, finetune, evosam, evosam-oracle, ewc, online-ewc, replay, lwf, joint\n",
    );
    for (p, on) in [
        ("zeroshot", true),
        ("finetune", true),
        ("evosam", true),
        ("evosam-oracle", false),
        ("ewc", false),
        ("online-ewc", false),
        ("replay", false),
        ("lwf", false),
        ("joint", false),
    ] {
        let c = if on { "" } else { "# " };
        s.push_str(&format!("\n{c}[[strategy]]\n{c}preset = \"{p}\"\n"));
    }
    s
}

/// Write the starter spec.
pub fn run(args: Args) -> evosam::Result<()> {
    if args.out.exists() && !args.force {
        return Err(Error::input(format!(
            "{} exists: pass --force to overwrite it, or --out another file",
            args.out.display()
        )));
    }
    let text = match &args.dir {
        None => {
            let t = include_str!("../../experiments/quickstart.toml");
            let body = t.split_once('\n').map(|(_, b)| b).unwrap_or(t);
            format!("{}{body}", schema_line(&args.out))
        }
        Some(d) => {
            let dir = std::path::absolute(d).map_err(|e| Error::io(d, e))?;
            if !dir.is_dir() {
                return Err(Error::input(format!("{} is not a folder", d.display())));
            }
            let tasks = detect(&dir)?;
            let stem = args
                .out
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "experiment".into());
            spec_text(&stem, &dir, &tasks, &args.out)
        }
    };
    let base = match args.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // validate before writing: keys, presets and (for a data folder) the files and splits
    let spec = Spec::from_str_at(&text, &args.out, &base)?;
    if args.dir.is_some() {
        for line in spec.check_data()? {
            println!("  task {line}");
        }
    }
    std::fs::write(&args.out, &text).map_err(|e| Error::io(&args.out, e))?;
    println!(
        "wrote {} ({} tasks, {} strategies); next: evosam validate {}",
        args.out.display(),
        spec.stream.tasks.len(),
        spec.strategies.len(),
        args.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::relative_to;
    use std::path::{Path, PathBuf};

    #[test]
    fn schema_path_is_relative_to_the_spec_folder_when_they_share_one() {
        let schema = Path::new("/a/b/docs/evosam.schema.json");
        assert_eq!(
            relative_to(schema, Path::new("/a/b/experiments")),
            Some(PathBuf::from("../docs/evosam.schema.json"))
        );
        assert_eq!(
            relative_to(schema, Path::new("/a/b/experiments/stress")),
            Some(PathBuf::from("../../docs/evosam.schema.json"))
        );
        assert_eq!(
            relative_to(schema, Path::new("/a/b")),
            Some(PathBuf::from("docs/evosam.schema.json"))
        );
        // only the root in common: the caller writes the absolute path
        assert_eq!(relative_to(schema, Path::new("/tmp")), None);
    }
}
