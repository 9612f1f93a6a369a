//! Property-based fuzzing (proptest, shrinking) of every parser of untrusted input: the spec parser and its
//! validation, the image loader, the NIfTI reader, the adapter / expert-folder loader and the results-folder loader
//! of `evosam report`. Property: whatever the bytes, no panic; an error is bad input (exit code 2) whose message
//! names the file or folder at fault; what loads is usable (a spec's cells and fingerprint, an expert set's routing,
//! a results set's report numbers).
//!
//! Bounded for CI (1,500 cases per target, under a minute in all on 2 cores); `EVOSAM_FUZZ_CASES=N` runs N cases per target,
//! `EVOSAM_FUZZ_SEED=S` another deterministic stream (the default seed is fixed, so CI is reproducible). Each target
//! prints its executions (`cargo test --release --locked --test fuzz -- --nocapture`). A failure prints the shrunk
//! input; crashes found are kept as explicit regression tests at the end of this file.

mod common;
use common::files_under;

use evosam::model::{Adapter, LiteMedSam, LiteMedSamConfig, LoraConfig};
use evosam::spec::Spec;
use evosam::strategy::Registry;
use evosam::Error;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run `test` on `cases` inputs from `strategy` (EVOSAM_FUZZ_CASES overrides), seeded; panics with the shrunk
/// input on the first failure. Returns the number of executions (shrinking included).
fn fuzz<S: Strategy>(
    name: &str,
    default_cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let cases = std::env::var("EVOSAM_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_cases);
    let seed: u64 = std::env::var("EVOSAM_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(14);
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&(name.len() as u64).to_le_bytes());
    for (i, b) in name.bytes().enumerate() {
        bytes[16 + i % 16] ^= b;
    }
    let mut cfg = Config::with_cases(cases);
    cfg.failure_persistence = None;
    cfg.max_shrink_iters = 2000;
    let mut runner =
        TestRunner::new_with_rng(cfg, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
    let n = AtomicUsize::new(0);
    let t0 = std::time::Instant::now();
    let r = runner.run(&strategy, |v| {
        n.fetch_add(1, Ordering::Relaxed);
        test(v)
    });
    eprintln!(
        "fuzz {name}: {} executions ({cases} cases, seed {seed}) in {:.1} s: {}",
        n.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64(),
        if r.is_ok() { "no failure" } else { "FAILED" }
    );
    if let Err(e) = r {
        panic!("fuzz {name}: {e}");
    }
}

/// An error must be bad input (exit 2) and name `what` (a file or folder).
fn typed(e: &Error, what: &[&str]) -> Result<(), TestCaseError> {
    let msg = e.to_string();
    prop_assert_eq!(e.exit_code(), 2, "not a bad-input error: {}", msg);
    prop_assert!(
        what.iter().any(|w| msg.contains(w)),
        "the message names none of {:?}: {}",
        what,
        msg
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------------------------
// Mutations shared by the targets.

/// One edit of a byte string.
#[derive(Clone, Debug)]
enum ByteEdit {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize, usize),
    Truncate(usize),
    Splice(usize, Vec<u8>),
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| ByteEdit::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| ByteEdit::Insert(i, b)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| ByteEdit::Delete(i, n)),
        any::<usize>().prop_map(ByteEdit::Truncate),
        (
            any::<usize>(),
            prop_oneof![
                Just(vec![0xff; 4]),
                Just(vec![0; 4]),
                Just(vec![0x7f, 0xff, 0xff, 0xff]),
                Just(vec![0xff, 0xff, 0xff, 0x7f]),
                proptest::collection::vec(any::<u8>(), 1..8),
            ]
        )
            .prop_map(|(i, v)| ByteEdit::Splice(i, v)),
    ]
}

fn apply_bytes(mut b: Vec<u8>, edits: &[ByteEdit]) -> Vec<u8> {
    for e in edits {
        let n = b.len();
        match e {
            ByteEdit::Flip(i, v) if n > 0 => b[i % n] ^= v | 1,
            ByteEdit::Insert(i, v) => b.insert(i % (n + 1), *v),
            ByteEdit::Delete(i, k) if n > 0 => {
                let s = i % n;
                b.drain(s..(s + k).min(n));
            }
            ByteEdit::Truncate(i) => b.truncate(i % (n + 1)),
            ByteEdit::Splice(i, v) if n > 0 => {
                let s = i % n;
                for (j, x) in v.iter().enumerate() {
                    if s + j < n {
                        b[s + j] = *x;
                    }
                }
            }
            _ => {}
        }
    }
    b
}

/// Values a mutated TOML or JSON key may take.
const ODD_VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "1000000",
    "9223372036854775807",
    "-9223372036854775808",
    "0.0",
    "-0.5",
    "0.5",
    "1.5",
    "1e308",
    "1e-320",
    "nan",
    "inf",
    "-inf",
    "\"\"",
    "\"x\"",
    "\"given\"",
    "\"../../nowhere\"",
    "\"*\"",
    "\"[\"",
    "\"/\"",
    "\"a,b\"",
    "true",
    "false",
    "[]",
    "[1, 2]",
    "[\"a\", \"a\"]",
    "[[1]]",
    "{}",
    "{ a = 1 }",
    "2026-01-01",
];

/// One edit of a TOML text, line by line.
#[derive(Clone, Debug)]
enum TomlEdit {
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    SetValue(usize, usize),
    RenameKey(usize, u8),
    InsertLine(usize, usize),
    Bytes(ByteEdit),
}

const INSERTED_LINES: &[&str] = &[
    "[[strategy]]",
    "preset = \"evosam\"",
    "[[stream.task]]",
    "[model.lora]",
    "[train]",
    "[eval.interactive]",
    "[slurm]",
    "[experiment]",
    "rank = 1000000",
    "projection_dim = 1000000000",
    "memory_size = 0",
    "steps = 3",
    "val_fraction = 0.5",
    "patience = 2",
    "random_orders = 3",
    "orders = [[\"a\", \"b\"]]",
    "unpaired = \"skip\"",
    "source = \"nifti\"",
    "source = \"folder\"",
    "kind = \"joint\"",
    "label = \"x\"",
    "weights = \"random-tiny\"",
    "max_clicks = 5",
    "targets = [0.9, 1.5]",
];

fn toml_edit() -> impl Strategy<Value = TomlEdit> {
    prop_oneof![
        1 => any::<usize>().prop_map(TomlEdit::DeleteLine),
        1 => any::<usize>().prop_map(TomlEdit::DuplicateLine),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| TomlEdit::SwapLines(a, b)),
        4 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| TomlEdit::SetValue(a, b)),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(a, b)| TomlEdit::RenameKey(a, b)),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| TomlEdit::InsertLine(a, b)),
        1 => byte_edit().prop_map(TomlEdit::Bytes),
    ]
}

fn apply_toml(text: &str, edits: &[TomlEdit]) -> Vec<u8> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut bytes: Vec<ByteEdit> = Vec::new();
    for e in edits {
        let n = lines.len().max(1);
        match e {
            TomlEdit::DeleteLine(i) if !lines.is_empty() => {
                lines.remove(i % n);
            }
            TomlEdit::DuplicateLine(i) if !lines.is_empty() => {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
            TomlEdit::SwapLines(a, b) if !lines.is_empty() => lines.swap(a % n, b % n),
            TomlEdit::SetValue(i, v) => {
                // the k-th `key = value` line gets an odd value
                let kv: Vec<usize> = (0..lines.len())
                    .filter(|&j| {
                        lines[j].contains(" = ") && !lines[j].trim_start().starts_with('#')
                    })
                    .collect();
                if !kv.is_empty() {
                    let j = kv[i % kv.len()];
                    let k = lines[j].split(" = ").next().unwrap().to_string();
                    lines[j] = format!("{k} = {}", ODD_VALUES[v % ODD_VALUES.len()]);
                }
            }
            TomlEdit::RenameKey(i, c) if !lines.is_empty() => {
                let l = &mut lines[i % n];
                if let Some(p) = l.find(" = ") {
                    if p > 0 {
                        let ch = (b'a' + c % 26) as char;
                        l.replace_range(p - 1..p, &ch.to_string());
                    }
                }
            }
            TomlEdit::InsertLine(i, k) => {
                let at = i % (lines.len() + 1);
                lines.insert(at, INSERTED_LINES[k % INSERTED_LINES.len()].to_string())
            }
            TomlEdit::Bytes(b) => bytes.push(b.clone()),
            _ => {}
        }
    }
    apply_bytes(lines.join("\n").into_bytes(), &bytes)
}

// ------------------------------------------------------------------------------------------------------------
// Target 1: the spec parser and validation.

fn shipped_specs() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(crate_dir().join("experiments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v.push(("tiny".into(), TINY_SPEC.into()));
    v
}

const TINY_SPEC: &str = "[experiment]\nname = \"t\"\nseeds = [0, 1]\n[stream]\norders = [\"given\", \"reverse\"]\n\
[[stream.task]]\nname = \"a\"\nsource = \"synthetic\"\nfamily = \"vessels\"\ntrain = 4\ntest = 2\nsize = 64\n\
[[stream.task]]\nname = \"b\"\nsource = \"synthetic\"\nfamily = \"organs\"\nsite = 1\ntrain = 4\ntest = 2\nsize = 64\n\
[model]\nweights = \"random-tiny\"\n[model.lora]\nrank = 2\nalpha = 2.0\n[train]\nepochs = 1\nbatch_size = 2\n\
[eval.interactive]\nmax_clicks = 3\nreport_at = [1]\n\
[[strategy]]\npreset = \"zeroshot\"\n[[strategy]]\npreset = \"evosam\"\n[strategy.matcher]\nprojection_dim = 8\n\
[[strategy]]\npreset = \"online-ewc\"\n[[strategy]]\npreset = \"replay\"\n[[strategy]]\npreset = \"lwf\"\n";

/// Parse (and, when it parses, use) a spec text: cells, fingerprint, model checks, data plans of synthetic tasks
/// and every strategy built on the tiny model.
fn check_spec(
    dir: &Path,
    bytes: &[u8],
    model: &LiteMedSam,
    reg: &Registry,
) -> Result<(), TestCaseError> {
    let file = dir.join("fuzz-input.toml");
    std::fs::write(&file, bytes).unwrap();
    let names = ["fuzz-input.toml", "baselines"];
    let spec = match Spec::load(&file, reg) {
        Ok(s) => s,
        Err(e) => return typed(&e, &names),
    };
    let cells = evosam::runner::cells_of(&spec);
    prop_assert_eq!(
        cells.len(),
        spec.strategies.len() * spec.experiment.seeds.len() * spec.orders.len()
    );
    let _ = evosam::runner::spec_fingerprint(&spec);
    if let Err(e) = evosam::runner::check_model(&spec) {
        return typed(&e, &names);
    }
    if spec
        .stream
        .tasks
        .iter()
        .all(|t| t.source.kind == "synthetic")
    {
        spec.check_data()
            .map_err(|e| TestCaseError::fail(format!("synthetic data: {e}")))?;
    }
    if spec.model.weights == "random-tiny" {
        for s in &spec.strategies {
            let env = evosam::BuildEnv::new(model, "fuzz", 1);
            if let Err(e) = reg.build(s, &env) {
                return typed(
                    &e,
                    &names
                        .iter()
                        .copied()
                        .chain([s.label.as_str()])
                        .collect::<Vec<_>>(),
                );
            }
        }
    }
    Ok(())
}

#[test]
fn fuzz_spec_parser_and_validation() {
    let reg = Registry::default();
    let model =
        LiteMedSam::random(&LiteMedSamConfig::tiny(), 0, &candle_core::Device::Cpu).unwrap();
    let specs = shipped_specs();
    let n = specs.len();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // mutations of the shipped experiments and of a tiny spec
    fuzz(
        "spec (mutated experiments/*.toml)",
        1500,
        (0..n, proptest::collection::vec(toml_edit(), 1..5)),
        |(i, edits)| check_spec(dir, &apply_toml(&specs[i].1, &edits), &model, &reg),
    );
    // arbitrary text and bytes
    fuzz(
        "spec (random text)",
        1500,
        prop_oneof![
            "\\PC{0,300}".prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..300),
            "(\\[[a-z.]{1,12}\\]\n|[a-z_]{1,10} = [-0-9.e\"a-z\\[\\]]{0,12}\n){0,20}"
                .prop_map(String::into_bytes),
        ],
        |b| check_spec(dir, &b, &model, &reg),
    );
}

// ------------------------------------------------------------------------------------------------------------
// Target 2: the image loader.

fn encoded_images() -> Vec<Vec<u8>> {
    use image::ImageFormat;
    let img = image::RgbImage::from_fn(13, 9, |x, y| {
        image::Rgb([(x * 19) as u8, (y * 27) as u8, 77])
    });
    let grey16 = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(7, 5, |x, y| {
        image::Luma([(x * 9000 + y * 300) as u16])
    });
    let mut out = Vec::new();
    for f in [
        ImageFormat::Png,
        ImageFormat::Jpeg,
        ImageFormat::Tiff,
        ImageFormat::Gif,
        ImageFormat::Pnm,
    ] {
        let mut c = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(img.clone())
            .write_to(&mut c, f)
            .unwrap();
        out.push(c.into_inner());
    }
    for f in [ImageFormat::Png, ImageFormat::Tiff] {
        let mut c = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageLuma16(grey16.clone())
            .write_to(&mut c, f)
            .unwrap();
        out.push(c.into_inner());
    }
    out
}

#[test]
fn fuzz_image_loader() {
    let seeds = encoded_images();
    let n = seeds.len();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("case.img");
    let check = |bytes: Vec<u8>| -> Result<(), TestCaseError> {
        std::fs::write(&path, &bytes).unwrap();
        match evosam::preprocess::load_image(&path) {
            Ok(img) => {
                let (h, w) = (img.height, img.width);
                prop_assert!(h > 0 && w > 0);
                // what loads can be preprocessed for the model
                let (t, meta) = evosam::preprocess::to_model_input(&img, 32)
                    .map_err(|e| TestCaseError::fail(format!("to_model_input: {e}")))?;
                prop_assert_eq!(t.dims(), &[3, 32, 32]);
                prop_assert_eq!((meta.orig_h, meta.orig_w), (h, w));
                Ok(())
            }
            Err(e) => typed(&e, &["case.img"]),
        }
    };
    fuzz(
        "image loader (mutated PNG/JPEG/TIFF/GIF/PPM)",
        1500,
        (0..n, proptest::collection::vec(byte_edit(), 1..4)),
        |(i, edits)| check(apply_bytes(seeds[i].clone(), &edits)),
    );
    fuzz(
        "image loader (random bytes)",
        1500,
        proptest::collection::vec(any::<u8>(), 0..200),
        check,
    );
}

// ------------------------------------------------------------------------------------------------------------
// Target 3: the NIfTI reader.

/// A NIfTI-1 single file: 348-byte header, 4 bytes of extension flag, then `data` (x fastest).
fn nifti_bytes(dims: [i16; 3], datatype: i16, bitpix: i16, slope: f32, data: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 352];
    h[0..4].copy_from_slice(&348i32.to_le_bytes());
    let d: [i16; 8] = [3, dims[0], dims[1], dims[2], 1, 1, 1, 1];
    for (i, v) in d.iter().enumerate() {
        h[40 + 2 * i..42 + 2 * i].copy_from_slice(&v.to_le_bytes());
    }
    h[70..72].copy_from_slice(&datatype.to_le_bytes());
    h[72..74].copy_from_slice(&bitpix.to_le_bytes());
    for i in 0..8 {
        h[76 + 4 * i..80 + 4 * i].copy_from_slice(&1f32.to_le_bytes());
    }
    h[108..112].copy_from_slice(&352f32.to_le_bytes());
    h[112..116].copy_from_slice(&slope.to_le_bytes());
    h[344..348].copy_from_slice(b"n+1\0");
    h.extend_from_slice(data);
    h
}

fn nifti_seeds() -> Vec<Vec<u8>> {
    let f32s: Vec<u8> = (0..4 * 3 * 2)
        .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
        .collect();
    let u8s: Vec<u8> = (0..5 * 4 * 3).map(|i| (i * 7 % 256) as u8).collect();
    let i16s: Vec<u8> = (0..3 * 3 * 2)
        .flat_map(|i| (i as i16 - 9).to_le_bytes())
        .collect();
    vec![
        nifti_bytes([4, 3, 2], 16, 32, 1.0, &f32s),
        nifti_bytes([5, 4, 3], 2, 8, 2.0, &u8s),
        nifti_bytes([3, 3, 2], 4, 16, 0.0, &i16s),
    ]
}

/// Header fields worth setting to odd values: (offset, width in bytes).
const NIFTI_FIELDS: &[(usize, usize)] = &[
    (0, 4),   // sizeof_hdr
    (40, 2),  // dim[0]
    (42, 2),  // dim[1]
    (44, 2),  // dim[2]
    (46, 2),  // dim[3]
    (48, 2),  // dim[4]
    (70, 2),  // datatype
    (72, 2),  // bitpix
    (76, 4),  // pixdim[0]
    (108, 4), // vox_offset
    (112, 4), // scl_slope
    (116, 4), // scl_inter
    (344, 4), // magic
];

#[test]
fn fuzz_nifti_reader() {
    let seeds = nifti_seeds();
    let n = seeds.len();
    let dir = tempfile::tempdir().unwrap();
    let check = |bytes: Vec<u8>, gz: bool| -> Result<(), TestCaseError> {
        let path = dir.path().join(if gz { "vol.nii.gz" } else { "vol.nii" });
        let data = if gz {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&bytes).unwrap();
            e.finish().unwrap()
        } else {
            bytes
        };
        std::fs::write(&path, &data).unwrap();
        match evosam::data::nifti::read_volume(&path) {
            Ok(v) => {
                prop_assert_eq!(v.data.len(), v.dims.iter().product::<usize>());
                prop_assert!(v.data.iter().all(|x| x.is_finite()));
                Ok(())
            }
            Err(e) => typed(&e, &["vol.nii"]),
        }
    };
    let field = (
        0..NIFTI_FIELDS.len(),
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(1),
            Just(2),
            Just(3),
            Just(4),
            Just(7),
            Just(8),
            Just(16),
            Just(64),
            Just(255),
            Just(32767),
            Just(-32768),
            Just(i32::MAX as i64),
            Just(352),
            Just(1_000_000_000),
            any::<i32>().prop_map(i64::from),
        ],
    );
    fuzz(
        "nifti reader (header fields, bytes, .nii and .nii.gz)",
        1500,
        (
            0..n,
            proptest::collection::vec(field, 0..4),
            proptest::collection::vec(byte_edit(), 0..3),
            any::<bool>(),
        ),
        |(i, fields, edits, gz)| {
            let mut b = seeds[i].clone();
            for (f, v) in fields {
                let (off, w) = NIFTI_FIELDS[f];
                if w == 2 {
                    b[off..off + 2].copy_from_slice(&(v as i16).to_le_bytes());
                } else if off == 108 || off == 112 || off == 116 || off == 76 {
                    b[off..off + 4].copy_from_slice(&(v as f32).to_le_bytes());
                } else {
                    b[off..off + 4].copy_from_slice(&(v as i32).to_le_bytes());
                }
            }
            check(apply_bytes(b, &edits), gz)
        },
    );
}

// ------------------------------------------------------------------------------------------------------------
// Target 4: the adapter and expert-folder loader (safetensors + JSON metadata).

/// An expert folder as `evosam run` writes it (two experts on the tiny model), the model and its tag.
fn expert_folder(dir: &Path) -> (LiteMedSam, &'static str) {
    use evosam::strategy::evosam::{ExpertSet, Routing};
    let model =
        LiteMedSam::random(&LiteMedSamConfig::tiny(), 3, &candle_core::Device::Cpu).unwrap();
    let cfg = LoraConfig {
        rank: 2,
        alpha: 2.0,
        targets: vec!["mask_decoder.transformer".into()],
    };
    let mut set = ExpertSet::new(
        Routing::Matcher,
        model.cfg.prompt.embed_dim,
        Default::default(),
        Default::default(),
    )
    .unwrap();
    for (t, name) in ["a", "b"].iter().enumerate() {
        let ad = Adapter::new(&model, &cfg, t as u64).unwrap();
        let feats: Vec<Vec<f64>> = (0..6)
            .map(|i| {
                (0..32)
                    .map(|j| ((i * 7 + j * 3 + t * 11) % 13) as f64 / 13.0)
                    .collect()
            })
            .collect();
        set.push(name, ad, Default::default(), &feats).unwrap();
    }
    set.save(dir, "fuzz").unwrap();
    (model, "fuzz")
}

/// A JSON edit: replace the k-th scalar/array/object value by an odd one.
fn mutate_json(text: &[u8], k: usize, v: usize) -> Vec<u8> {
    let Ok(mut j) = serde_json::from_slice::<serde_json::Value>(text) else {
        return text.to_vec();
    };
    let odd = [
        serde_json::json!(null),
        serde_json::json!(-1),
        serde_json::json!(0),
        serde_json::json!(1e308),
        serde_json::json!(1_000_000_000u64),
        serde_json::json!(""),
        serde_json::json!("../../../etc/passwd"),
        serde_json::json!([]),
        serde_json::json!([1.0]),
        serde_json::json!({}),
        serde_json::json!(true),
    ];
    fn count(v: &serde_json::Value) -> usize {
        1 + match v {
            serde_json::Value::Array(a) => a.iter().map(count).sum(),
            serde_json::Value::Object(o) => o.values().map(count).sum(),
            _ => 0,
        }
    }
    fn nth(v: &mut serde_json::Value, k: &mut usize) -> Option<*mut serde_json::Value> {
        if *k == 0 {
            return Some(v as *mut _);
        }
        *k -= 1;
        match v {
            serde_json::Value::Array(a) => a.iter_mut().find_map(|x| nth(x, k)),
            serde_json::Value::Object(o) => o.values_mut().find_map(|x| nth(x, k)),
            _ => None,
        }
    }
    let total = count(&j);
    let mut idx = k % total;
    if let Some(p) = nth(&mut j, &mut idx) {
        // SAFETY: the pointer comes from `j`, borrowed mutably only here
        unsafe { *p = odd[v % odd.len()].clone() };
    }
    serde_json::to_vec(&j).unwrap()
}

#[derive(Clone, Debug)]
enum FolderEdit {
    Bytes(usize, Vec<ByteEdit>),
    Json(usize, usize, usize),
    Remove(usize),
}

fn folder_edit() -> impl Strategy<Value = FolderEdit> {
    prop_oneof![
        2 => (any::<usize>(), proptest::collection::vec(byte_edit(), 1..3))
            .prop_map(|(f, e)| FolderEdit::Bytes(f, e)),
        3 => (any::<usize>(), any::<usize>(), any::<usize>()).prop_map(|(f, k, v)| FolderEdit::Json(f, k, v)),
        1 => any::<usize>().prop_map(FolderEdit::Remove),
    ]
}

/// Copy `src` to `dst` and apply the edits to its files.
fn edited_copy(src: &Path, dst: &Path, edits: &[FolderEdit], json_only: bool) {
    let _ = std::fs::remove_dir_all(dst);
    let files = files_under(src);
    for f in &files {
        let to = dst.join(f);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(src.join(f), &to).unwrap();
    }
    let pick = |i: usize, pred: &dyn Fn(&Path) -> bool| -> Option<PathBuf> {
        let c: Vec<&PathBuf> = files.iter().filter(|f| pred(f)).collect();
        (!c.is_empty()).then(|| dst.join(c[i % c.len()]))
    };
    for e in edits {
        match e {
            FolderEdit::Bytes(i, b) if !json_only => {
                if let Some(p) = pick(*i, &|_| true) {
                    if let Ok(x) = std::fs::read(&p) {
                        std::fs::write(&p, apply_bytes(x, b)).unwrap();
                    }
                }
            }
            FolderEdit::Bytes(i, b) => {
                if let Some(p) = pick(*i, &|f| f.extension().is_some_and(|x| x == "json")) {
                    if let Ok(x) = std::fs::read(&p) {
                        std::fs::write(&p, apply_bytes(x, b)).unwrap();
                    }
                }
            }
            FolderEdit::Json(i, k, v) => {
                if let Some(p) = pick(*i, &|f| f.extension().is_some_and(|x| x == "json")) {
                    if let Ok(x) = std::fs::read(&p) {
                        std::fs::write(&p, mutate_json(&x, *k, *v)).unwrap();
                    }
                }
            }
            FolderEdit::Remove(i) => {
                if let Some(p) = pick(*i, &|_| true) {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
    }
}

#[test]
fn fuzz_expert_folder_and_adapter_loader() {
    use evosam::strategy::evosam::ExpertSet;
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    let (model, sha) = expert_folder(&good);
    assert!(ExpertSet::load(&good, &model, sha).is_ok());
    let dir = tmp.path().join("case");
    let dirname = dir.display().to_string();
    let emb = candle_core::Tensor::ones(
        (2, 32, 64, 64),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    fuzz(
        "expert folder (evosam.json, matcher.json, novelty.json, experts/*.safetensors)",
        1500,
        proptest::collection::vec(folder_edit(), 1..4),
        |edits| {
            edited_copy(&good, &dir, &edits, false);
            match ExpertSet::load(&dir, &model, sha) {
                Ok(set) => {
                    // what loads routes images
                    let pooled: Vec<f64> = (0..32).map(|i| i as f64 / 32.0).collect();
                    let c = set
                        .decide(&pooled)
                        .map_err(|e| TestCaseError::fail(format!("decide: {e}")));
                    if let Ok(c) = c {
                        prop_assert!(c.expert.is_none_or(|k| k < set.len()));
                    }
                    let _ = set.route(&emb);
                    Ok(())
                }
                Err(e) => typed(&e, &[dirname.as_str()]),
            }
        },
    );
    // one adapter file alone
    let file = good.join("experts/0.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let path = tmp.path().join("one.safetensors");
    fuzz(
        "adapter file (safetensors + metadata)",
        1500,
        proptest::collection::vec(byte_edit(), 1..4),
        |edits| {
            std::fs::write(&path, apply_bytes(bytes.clone(), &edits)).unwrap();
            match Adapter::load(&path, &model, sha) {
                Ok(a) => {
                    prop_assert!(a.num_params() > 0);
                    Ok(())
                }
                Err(e) => typed(&e, &["one.safetensors"]),
            }
        },
    );
}

// ------------------------------------------------------------------------------------------------------------
// Target 5: the results-folder loader of `evosam report`.

/// A small results folder written by a real (tiny) run.
fn results_folder(out: &Path) -> PathBuf {
    let text = TINY_SPEC
        .replace("seeds = [0, 1]", "seeds = [0]")
        .replace("orders = [\"given\", \"reverse\"]", "orders = [\"given\"]");
    // zeroshot, evosam and online-ewc: drop the last two strategies
    let text = &text[..text.find("[[strategy]]\npreset = \"replay\"").unwrap()];
    let spec = Spec::parse(
        text,
        Path::new("tiny.toml"),
        &crate_dir().join("experiments"),
        &Registry::default(),
    )
    .unwrap();
    let mut opts = evosam::RunOptions::default();
    opts.out = Some(out.to_path_buf());
    opts.quiet = true;
    opts.report = false;
    evosam::run(spec, &Registry::default(), &opts).unwrap().dir
}

#[test]
fn fuzz_results_folder_loader() {
    let tmp = tempfile::tempdir().unwrap();
    let good = results_folder(&tmp.path().join("runs"));
    let rs = evosam::load_results(std::slice::from_ref(&good)).unwrap();
    let _ = evosam::report::ReportData::compute(&rs);
    // only what `evosam report` reads (not the checkpoints)
    let src = tmp.path().join("tables");
    for f in [
        "scores.csv",
        "scores.parquet",
        "matrix.csv",
        "metrics.csv",
        "extras.csv",
        "manifest.json",
        "clicks.csv",
        "clicks.parquet",
        "interactive.csv",
        "interactive.json",
    ] {
        std::fs::create_dir_all(&src).unwrap();
        if good.join(f).is_file() {
            std::fs::copy(good.join(f), src.join(f)).unwrap();
        }
    }
    let dir = tmp.path().join("case");
    let dirname = dir.display().to_string();
    let rows = |p: &Path| {
        std::fs::read_to_string(p)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let csv_edit = (any::<usize>(), any::<usize>(), any::<usize>());
    fuzz(
        "results folder (CSV, Parquet and JSON tables)",
        1500,
        (
            proptest::collection::vec(folder_edit(), 1..4),
            proptest::collection::vec(csv_edit, 0..3),
        ),
        |(edits, cells)| {
            edited_copy(&src, &dir, &edits, false);
            // CSV cell edits: the k-th field of a table gets an odd value
            for (f, k, v) in cells {
                let csvs: Vec<PathBuf> = files_under(&dir)
                    .into_iter()
                    .filter(|p| p.extension().is_some_and(|x| x == "csv"))
                    .collect();
                if csvs.is_empty() {
                    break;
                }
                let p = dir.join(&csvs[f % csvs.len()]);
                let t = std::fs::read_to_string(&p).unwrap_or_default();
                let mut fields: Vec<String> = t.split(',').map(str::to_string).collect();
                let odd = [
                    "",
                    "nan",
                    "-inf",
                    "1e309",
                    "x",
                    "\"",
                    "-1",
                    "99999999999999999999",
                    "0.5\n",
                ];
                let i = k % fields.len();
                fields[i] = odd[v % odd.len()].to_string();
                std::fs::write(&p, fields.join(",")).unwrap();
            }
            let _ = rows(&dir.join("scores.csv"));
            match evosam::load_results(std::slice::from_ref(&dir)) {
                Ok(rs) => {
                    let _ = evosam::report::ReportData::compute(&rs);
                    Ok(())
                }
                Err(e) => typed(&e, &[dirname.as_str()]),
            }
        },
    );
}

// ------------------------------------------------------------------------------------------------------------
// Regression cases: every crash the fuzzer found, kept as explicit tests.

/// Found by `fuzz_expert_folder_and_adapter_loader` and `fuzz_results_folder_loader`: a JSON file that is not
/// UTF-8 was an internal error (exit 1); it is bad input (exit 2) naming the file.
#[test]
fn regression_json_that_is_not_utf8_is_bad_input() {
    use evosam::strategy::evosam::ExpertSet;
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    let (model, sha) = expert_folder(&good);
    let mut m = std::fs::read(good.join("matcher.json")).unwrap();
    m.insert(1, 0xff);
    std::fs::write(good.join("matcher.json"), m).unwrap();
    let e = ExpertSet::load(&good, &model, sha).err().unwrap();
    assert_eq!(e.exit_code(), 2, "{e}");
    assert!(e.to_string().contains("matcher.json"), "{e}");
}

/// Found by `fuzz_expert_folder_and_adapter_loader` (shrunk: 19 bytes deleted from `matcher.json`): a matcher whose
/// saved sizes disagree loaded, then routing indexed out of bounds (a panic); it is refused at load, naming the file.
#[test]
fn regression_inconsistent_matcher_is_refused_at_load() {
    use evosam::strategy::evosam::ExpertSet;
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    let (model, sha) = expert_folder(&good);
    let p = good.join("matcher.json");
    let mut j: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    let w = j["w"].as_array_mut().unwrap();
    w.pop();
    std::fs::write(&p, serde_json::to_vec(&j).unwrap()).unwrap();
    let e = ExpertSet::load(&good, &model, sha).err().unwrap();
    assert_eq!(e.exit_code(), 2, "{e}");
    assert!(
        e.to_string().contains("matcher.json") && e.to_string().contains("inconsistent"),
        "{e}"
    );
    // the shrunk input itself: whatever it loads to, routing must not panic
    let dir = tmp.path().join("case");
    let (model, sha) = expert_folder(&tmp.path().join("fresh"));
    edited_copy(
        &tmp.path().join("fresh"),
        &dir,
        &[FolderEdit::Bytes(
            16921518231684631053,
            vec![ByteEdit::Delete(2611164404871248313, 19)],
        )],
        false,
    );
    if let Ok(set) = ExpertSet::load(&dir, &model, sha) {
        let _ = set.decide(&[0.5; 32]);
    }
}

/// Found by `fuzz_expert_folder_and_adapter_loader` with 1,500 cases: an expert `file` of "" (or `..`, or an
/// absolute path) in `evosam.json` read the folder itself, or a file outside it; it is refused naming the manifest.
#[test]
fn regression_expert_file_outside_the_folder_is_refused() {
    use evosam::strategy::evosam::ExpertSet;
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    let (model, sha) = expert_folder(&good);
    let p = good.join("evosam.json");
    let orig: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    for bad in ["", "..", "/etc/passwd", "../good/experts/0.safetensors"] {
        let mut j = orig.clone();
        j["experts"][0]["file"] = serde_json::json!(bad);
        std::fs::write(&p, serde_json::to_vec(&j).unwrap()).unwrap();
        let e = ExpertSet::load(&good, &model, sha).err().unwrap();
        assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        assert!(e.to_string().contains("evosam.json"), "{bad:?}: {e}");
    }
}
