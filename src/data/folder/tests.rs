use super::*;

fn write_png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) {
    let img = image::GrayImage::from_fn(w, h, |x, y| image::Luma([f(x, y)]));
    img.save(path).unwrap();
}

fn spec_in(dir: &Path) -> Spec {
    let text = "[experiment]\nname = \"x\"\n[stream]\n[[stream.task]]\nname = \"a\"\nsource = \"synthetic\"\nfamily = \"vessels\"\n[[strategy]]\npreset = \"zeroshot\"\n";
    Spec::from_str_at(text, &dir.join("spec.toml"), dir).unwrap()
}

fn folder(extra: &str) -> FolderSpec {
    let t = format!("root = \"data\"\nimages = \"img/*.png\"\nmasks = \"lbl/*.png\"\nstrip = [\"_seg\"]\n{extra}");
    toml::from_str(&t).unwrap()
}

#[test]
fn width_keeps_the_images_of_one_frame_size() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    std::fs::create_dir_all(d.join("img")).unwrap();
    std::fs::create_dir_all(d.join("lbl")).unwrap();
    for (i, w) in [12, 30, 12, 31, 40].into_iter().enumerate() {
        write_png(&d.join(format!("img/c{i}.png")), w, 10, |_, _| 9);
        write_png(&d.join(format!("lbl/c{i}_seg.png")), w, 10, |_, _| 255);
    }
    let spec = spec_in(dir.path());
    let keys = |f: FolderSpec| {
        let p = f.plan(&spec, "a").unwrap();
        let mut k: Vec<String> = p
            .train
            .iter()
            .chain(&p.test)
            .map(|i| i.key.clone())
            .collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(folder("test_fraction = 0.5\nwidth = [30, 31]")),
        ["c1", "c3"]
    );
    assert_eq!(
        keys(folder("test_fraction = 0.5\nwidth = [0, 12]")),
        ["c0", "c2"]
    );
    let e = folder("test_fraction = 0.5\nwidth = [50, 60]")
        .plan(&spec, "a")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no image") && e.contains("[50, 60]"), "{e}");
    let e = folder("test_fraction = 0.5\nwidth = [5, 4]")
        .validate()
        .err()
        .unwrap();
    assert!(format!("{e:?}").contains("width"), "{e:?}");
}

#[test]
fn pairs_splits_and_loads() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    std::fs::create_dir_all(d.join("img")).unwrap();
    std::fs::create_dir_all(d.join("lbl")).unwrap();
    for i in 0..5 {
        write_png(&d.join(format!("img/c{i}.png")), 12, 10, |x, y| {
            (x * 10 + y) as u8
        });
        write_png(&d.join(format!("lbl/c{i}_seg.png")), 12, 10, |x, _| {
            if x < 3 {
                255
            } else {
                0
            }
        });
    }
    let spec = spec_in(dir.path());
    let f = folder("test_ids = [\"c1\", \"c3\"]");
    f.validate().unwrap();
    let p = f.plan(&spec, "a").unwrap();
    assert_eq!(
        p.train.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
        ["c0", "c2", "c4"]
    );
    assert_eq!(
        p.test.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
        ["c1", "c3"]
    );
    let (tr, te) = f.load(&spec, "a").unwrap();
    assert_eq!((tr.len(), te.len()), (3, 2));
    assert_eq!((tr[0].mask.w, tr[0].mask.h), (12, 10));
    assert_eq!(tr[0].mask.count(), 30);

    let f = folder("test_fraction = 0.4\nsplit_seed = 3\nmax_train = 2");
    let p = f.plan(&spec, "a").unwrap();
    assert_eq!((p.train.len(), p.test.len()), (2, 2));
    let f = folder("test_glob = \"img/c4*\"");
    let p = f.plan(&spec, "a").unwrap();
    assert_eq!(p.test.len(), 1);
    assert_eq!(p.test[0].key, "c4");

    // a missing mask is named
    std::fs::remove_file(d.join("lbl/c2_seg.png")).unwrap();
    let e = folder("test_fraction = 0.5")
        .plan(&spec, "a")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("c2.png") && e.contains("no mask"), "{e}");
    // unknown test id
    write_png(&d.join("lbl/c2_seg.png"), 12, 10, |_, _| 0);
    let e = folder("test_ids = [\"zz\"]")
        .plan(&spec, "a")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("zz"), "{e}");
    // nothing matches
    let f: FolderSpec = toml::from_str(
        "root = \"data\"\nimages = \"*.jpg\"\nmasks = \"lbl/*.png\"\ntest_fraction = 0.5",
    )
    .unwrap();
    let e = f.plan(&spec, "a").err().unwrap().to_string();
    assert!(e.contains("no image matches"), "{e}");
    // missing root
    let f: FolderSpec = toml::from_str(
        "root = \"nope\"\nimages = \"*.jpg\"\nmasks = \"*.png\"\ntest_fraction = 0.5",
    )
    .unwrap();
    assert!(f
        .plan(&spec, "a")
        .err()
        .unwrap()
        .to_string()
        .contains("does not exist"));
    // split rules
    assert!(folder("").validate().is_err());
    assert!(folder("test_fraction = 0.5\ntest_ids = [\"c1\"]")
        .validate()
        .is_err());
    assert!(folder("test_fraction = 1.5").validate().is_err());
    assert!(toml::from_str::<FolderSpec>("images = \"a\"\nmasks = \"b\"\nbogus = 1").is_err());
    // unpaired images: an error by default, left out and listed with `unpaired = "skip"`
    std::fs::remove_file(d.join("lbl/c2_seg.png")).unwrap();
    let e = folder("test_fraction = 0.5")
        .plan(&spec, "a")
        .err()
        .unwrap();
    assert!(e.to_string().contains("unpaired = \"skip\""), "{e}");
    assert_eq!(e.exit_code(), 2);
    let p = folder("test_fraction = 0.5\nunpaired = \"skip\"")
        .plan(&spec, "a")
        .unwrap();
    assert_eq!(p.train.len() + p.test.len(), 4);
    assert_eq!(p.skipped, vec![d.join("img/c2.png")]);
    assert!(!p.train.iter().chain(&p.test).any(|i| i.key == "c2"));
    assert!(toml::from_str::<FolderSpec>(
        "images = \"a\"\nmasks = \"b\"\ntest_fraction = 0.5\nunpaired = \"maybe\""
    )
    .is_err());
    assert!(folder("test_glob = \"[\"").validate().is_err());
}

#[test]
fn relative_paths_ignore_dot_components() {
    let r = |p: &str, root: &str| relative_to(Path::new(p), Path::new(root));
    assert_eq!(
        r("../data/test/a.png", "./../data"),
        Path::new("test/a.png")
    );
    assert_eq!(
        r("./../data/test/a.png", "../data"),
        Path::new("test/a.png")
    );
    assert_eq!(r("/x/data/test/a.png", "/x/data"), Path::new("test/a.png"));
    assert_eq!(r("data/a.png", "."), Path::new("data/a.png"));
    // not under the root: unchanged
    assert_eq!(r("/y/a.png", "/x"), Path::new("/y/a.png"));
}

/// `mask_values`: REFUGE-style class codes (0 cup, 128 rim, 255 background) read as the disc; a list that marks
/// nothing is an input error naming the task; a threshold and a value list together are refused.
#[test]
fn mask_values_pick_class_codes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    std::fs::create_dir_all(d.join("img")).unwrap();
    std::fs::create_dir_all(d.join("lbl")).unwrap();
    for i in 0..4 {
        write_png(&d.join(format!("img/c{i}.png")), 8, 6, |x, y| {
            (x * 10 + y) as u8
        });
        // columns 0-1 cup (0), 2-4 rim (128), 5-7 background (255)
        write_png(&d.join(format!("lbl/c{i}_seg.png")), 8, 6, |x, _| match x {
            0..=1 => 0,
            2..=4 => 128,
            _ => 255,
        });
    }
    let spec = spec_in(dir.path());
    let disc = folder("test_fraction = 0.5\nmask_values = [0, 128]");
    disc.validate().unwrap();
    let (tr, te) = disc.load(&spec, "disc").unwrap();
    assert!(tr.iter().chain(&te).all(|c| c.mask.count() == 5 * 6));
    assert_eq!(tr[0].mask.data[..8], [1, 1, 1, 1, 1, 0, 0, 0]);
    let cup = folder("test_fraction = 0.5\nmask_values = [0]");
    let (tr, _) = cup.load(&spec, "cup").unwrap();
    assert_eq!(tr[0].mask.count(), 2 * 6);
    // a threshold reads the same masks as "brighter than 127": the background
    let (tr, _) = folder("test_fraction = 0.5").load(&spec, "t").unwrap();
    assert_eq!(tr[0].mask.count(), 6 * 6);
    let none = folder("test_fraction = 0.5\nmask_values = [7]");
    let e = none.load(&spec, "refuge").err().unwrap().to_string();
    assert!(e.contains("\"refuge\"") && e.contains("mask_values"), "{e}");
    let both = folder("test_fraction = 0.5\nmask_values = [0]\nmask_threshold = 10");
    assert_eq!(both.validate().unwrap_err().path.to_string(), "mask_values");
    assert!(folder("test_fraction = 0.5\nmask_values = []")
        .validate()
        .is_err());
    assert!(folder("test_fraction = 0.5\nspacing = [0.0, 1.0]")
        .validate()
        .is_err());
}
