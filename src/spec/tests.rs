//! Spec parsing tests (they use the built-in registry through `Spec::from_str_at`).

use super::*;
use crate::Result;

const GOOD: &str = r#"
[experiment]
name = "t"
seeds = [0, 1]

[stream]
orders = ["given", "reverse", ["b", "a"]]
random_orders = 1

[[stream.task]]
name = "a"
source = "synthetic"
family = "vessels"
site = 0

[[stream.task]]
name = "b"
source = "synthetic"
family = "organs"
site = 1
train = 4
test = 2

[model]
weights = "random-tiny"
[model.lora]
rank = 2

[train]
epochs = 2
lr = 0.01

[[strategy]]
preset = "zeroshot"

[[strategy]]
preset = "finetune"
[strategy.train]
epochs = 5
"#;

fn parse(text: &str) -> Result<Spec> {
    Spec::from_str_at(text, Path::new("spec.toml"), Path::new("/nonexistent-dir"))
}

fn err_of(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("accepted a bad spec:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn good_spec_parses_and_merges() {
    let s = parse(GOOD).unwrap();
    assert_eq!(s.experiment.seeds, vec![0, 1]);
    assert_eq!(s.stream.tasks.len(), 2);
    let labels: Vec<_> = s.orders.iter().map(|o| o.label.as_str()).collect();
    assert_eq!(labels, ["given", "reverse", "perm1", "random1"]);
    assert_eq!(s.orders[1].tasks, vec![1, 0]);
    assert_eq!(s.orders[2].tasks, vec![1, 0]);
    assert_eq!(s.strategies.len(), 2);
    let ft = &s.strategies[1];
    assert_eq!(ft.kind, "finetune");
    assert_eq!(ft.label, "finetune");
    assert_eq!(ft.train.epochs, 5); // entry override
    assert_eq!(ft.train.lr, 0.01); // spec [train]
    assert_eq!(ft.lora.rank, 2); // spec [model.lora]
    assert_eq!(s.strategies[0].train.epochs, 2);
    assert_eq!(s.model.weights, "random-tiny");
}

fn replace(a: &str, b: &str) -> String {
    assert!(GOOD.contains(a), "{a}");
    GOOD.replacen(a, b, 1)
}

#[test]
fn unknown_key_names_line_and_key() {
    let e = err_of(&replace("epochs = 2", "epochz = 2"));
    assert!(
        e.contains("spec.toml") && e.contains("epochz") && e.contains("line 30"),
        "{e}"
    );
    let e = err_of(&replace("seeds = [0, 1]", "seeds = [0, 1]\ncolour = 1"));
    assert!(e.contains("colour") && e.contains("line 5"), "{e}");
    // unknown key inside a task source
    let e = err_of(&replace("site = 0", "site = 0\nbrightness = 3"));
    assert!(
        e.contains("brightness") && e.contains("line 15") && e.contains("(a)"),
        "{e}"
    );
    // unknown key in a strategy override
    let e = err_of(&replace(
        "preset = \"zeroshot\"",
        "preset = \"zeroshot\"\nfoo = 1",
    ));
    assert!(e.contains("foo") && e.contains("line 35"), "{e}");
    // unknown key in [model]
    let e = err_of(&replace(
        "weights = \"random-tiny\"",
        "weights = \"random-tiny\"\nwieghts = 1",
    ));
    assert!(e.contains("wieghts"), "{e}");
}

#[test]
fn wrong_types_and_missing_keys() {
    let e = err_of(&replace("epochs = 2", "epochs = \"two\""));
    assert!(e.contains("line 30") && e.contains("epochs"), "{e}");
    let e = err_of(&replace("seeds = [0, 1]", "seeds = 3"));
    assert!(e.contains("line 4"), "{e}");
    let e = err_of(&replace("name = \"t\"\n", ""));
    assert!(e.contains("name"), "{e}");
    let e = err_of(&replace(
        "source = \"synthetic\"\nfamily = \"vessels\"",
        "family = \"vessels\"",
    ));
    assert!(e.contains("source") && e.contains("line 1"), "{e}");
    let e = err_of(&replace("family = \"vessels\"", "family = \"trees\""));
    assert!(e.contains("trees"), "{e}");
    let e = err_of(&replace("source = \"synthetic\"", "source = \"dicom\""));
    assert!(e.contains("dicom"), "{e}");
    let e = err_of(&replace("rank = 2", "rank = -2"));
    assert!(e.contains("rank") || e.contains("lora"), "{e}");
}

#[test]
fn bad_orders_and_strategies() {
    let e = err_of(&replace("[\"b\", \"a\"]", "[\"b\", \"c\"]"));
    assert!(e.contains("unknown task \"c\""), "{e}");
    let e = err_of(&replace("[\"b\", \"a\"]", "[\"b\"]"));
    assert!(e.contains("all 2 tasks"), "{e}");
    let e = err_of(&replace("\"reverse\",", "\"backwards\","));
    assert!(e.contains("backwards"), "{e}");
    let e = err_of(&replace("preset = \"zeroshot\"", "preset = \"nosuch\""));
    assert!(e.contains("unknown preset \"nosuch\""), "{e}");
    let e = err_of(&replace("preset = \"zeroshot\"", "preset = \"finetune\""));
    assert!(e.contains("used twice"), "{e}");
    let e = err_of(&replace("name = \"b\"", "name = \"a\""));
    assert!(e.contains("used twice"), "{e}");
    let e = err_of(&replace("seeds = [0, 1]", "seeds = []"));
    assert!(e.contains("seeds"), "{e}");
    let e = err_of(&replace("seeds = [0, 1]", "device = \"tpu\""));
    assert!(e.contains("tpu"), "{e}");
    let e = err_of("[experiment]\nname = \"x\"\n[stream]\n[[strategy]]\npreset = \"zeroshot\"\n");
    assert!(e.contains("no [[stream.task]]"), "{e}");
    let e = err_of("[experiment]\nname = \"x\"\n[stream]\n[[stream.task]]\nname=\"a\"\nsource=\"synthetic\"\nfamily=\"vessels\"\n");
    assert!(e.contains("no [[strategy]]"), "{e}");
    let e = err_of("this is not toml");
    assert!(e.contains("line 1"), "{e}");
    // a bad value in a strategy's train override
    let e = err_of(&replace("epochs = 5", "epochs = 5\nlr = -1.0"));
    assert!(e.contains("lr"), "{e}");
}

#[test]
fn preset_files_next_to_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("baselines")).unwrap();
    std::fs::write(
        dir.path().join("baselines/myft.toml"),
        "kind = \"finetune\"\nlabel = \"ft2\"\n[train]\nepochs = 9\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("baselines/bad.toml"),
        "kind = \"finetune\"\nwhat = 1\n",
    )
    .unwrap();
    let text = GOOD
        .replace("[train]\nepochs = 2\nlr = 0.01\n", "")
        .replace("preset = \"zeroshot\"", "preset = \"myft\"");
    let s = Spec::from_str_at(&text, Path::new("spec.toml"), dir.path()).unwrap();
    assert_eq!(s.strategies[0].label, "ft2");
    assert_eq!(s.strategies[0].train.epochs, 9); // preset value (spec [train] has no epochs)
    let text = GOOD.replace("preset = \"zeroshot\"", "preset = \"bad\"");
    let e = Spec::from_str_at(&text, Path::new("spec.toml"), dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.toml") && e.contains("what"), "{e}");
    let text = GOOD.replace(
        "preset = \"zeroshot\"",
        "preset = \"finetune\"\nkind = \"magic\"\nlabel = \"m\"",
    );
    let e = Spec::from_str_at(&text, Path::new("spec.toml"), dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("magic") && e.contains("spec.toml"), "{e}");
}

#[test]
fn env_expansion() {
    assert_eq!(expand_env("${EVOSAM_TEST_UNSET_VAR_X:-a/b}/c"), "a/b/c");
    assert_eq!(expand_env("${EVOSAM_TEST_UNSET_VAR_X}/c"), "/c");
    assert_eq!(expand_env("plain/${"), "plain/${");
    let home = std::env::var("HOME").unwrap_or_default();
    if !home.is_empty() {
        assert_eq!(expand_env("${HOME:-x}/y"), format!("{home}/y"));
    }
}

#[test]
fn shipped_specs_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for f in std::fs::read_dir(root.join("experiments")).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            Spec::from_file(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
    }
}

/// EvoSAM's presets bring their own validation split (its keep-the-start guard needs held-out images), which a
/// spec's `[train] val_fraction` or the entry's overrides; the other presets train on every image.
#[test]
fn evosam_presets_hold_out_validation_images_unless_the_spec_says_otherwise() {
    let entries = "[[strategy]]\npreset = \"finetune\"\n\n[[strategy]]\npreset = \"evosam\"\n\n\
                   [[strategy]]\npreset = \"evosam-oracle\"\n";
    let base = GOOD[..GOOD.find("[[strategy]]").unwrap()].to_string();
    let vf = |s: &Spec| -> Vec<f64> { s.strategies.iter().map(|x| x.train.val_fraction).collect() };
    let s = parse(&format!("{base}{entries}")).unwrap();
    assert_eq!(vf(&s), vec![0.0, 0.25, 0.25]);
    let own = base.replace("lr = 0.01", "lr = 0.01\nval_fraction = 0.1");
    assert_eq!(
        vf(&parse(&format!("{own}{entries}")).unwrap()),
        vec![0.1, 0.1, 0.1]
    );
    let off = base.replace("lr = 0.01", "lr = 0.01\nval_fraction = 0.0");
    assert_eq!(
        vf(&parse(&format!("{off}{entries}")).unwrap()),
        vec![0.0, 0.0, 0.0]
    );
    let entry = format!("{base}{entries}[strategy.train]\nval_fraction = 0.5\n");
    assert_eq!(vf(&parse(&entry).unwrap()), vec![0.0, 0.25, 0.5]);
}
