//! One call that opens a study and serves its page: what `evosam annotate` runs, for any program.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::engine::{Arm, Engine};
use super::schedule::Design;
use super::server::{serve, App};
use super::session::{record, Session};
use super::{cases, tables};
use crate::embed_cache::EmbeddingCache;
use crate::model::LiteMedSam;
use crate::strategy::evosam::ExpertSet;
use crate::weights::{evosam_home, resolve_weights, sha256_file};
use crate::{Error, Result};

/// Where a study's images come from.
#[derive(Clone, Debug)]
pub enum StudyImages {
    /// Every image file directly in `images`; ground truth from `masks`, paired by file stem (foreground > 127),
    /// when given (Dice is then logged with every prompt).
    Folder {
        /// The images.
        images: PathBuf,
        /// Their masks.
        masks: Option<PathBuf>,
    },
    /// The test images of one task of an experiment spec, ground truth included.
    SpecTask {
        /// The spec file.
        spec: PathBuf,
        /// The task's name.
        task: String,
    },
}

/// The arm EvoSAM is compared with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The frozen LiteMedSAM.
    Base,
    /// Another expert folder (a `state` folder of an evosam cell).
    Experts(PathBuf),
}

/// A study with people: which images, which two models, where the record goes, who annotates.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StudyOptions {
    /// The images.
    pub images: StudyImages,
    /// EvoSAM's expert folder (arm A); its matcher routes each image.
    pub experts: PathBuf,
    /// Arm B.
    pub compare: Compare,
    /// The study folder (created; reopened to continue).
    pub out: PathBuf,
    /// Who annotates (names the log file).
    pub annotator: String,
    /// Address to listen on (port 0: any free port).
    pub addr: SocketAddr,
    /// Schedule seed (also draws the `max_cases` subset).
    pub seed: u64,
    /// Study design.
    pub design: Design,
    /// Annotate a seeded subset of at most this many images.
    pub max_cases: Option<usize>,
    /// Pass the previous mask as SAM's mask prompt with each click.
    pub mask_prompt: bool,
    /// LiteMedSAM weights (None: the cache, fetched when missing).
    pub weights: Option<PathBuf>,
}

impl StudyOptions {
    /// A split-design study against the base model, annotator `annotator`, on 127.0.0.1:8765, seed 0, every
    /// image, mask prompts on, the cached weights.
    pub fn new(images: StudyImages, experts: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            images,
            experts: experts.into(),
            compare: Compare::Base,
            out: out.into(),
            annotator: "annotator".into(),
            addr: SocketAddr::from(([127, 0, 0, 1], 8765)),
            seed: 0,
            design: Design::Split,
            max_cases: None,
            mask_prompt: true,
            weights: None,
        }
    }
}

/// The page, once it listens: what to tell the annotator.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Ready {
    /// The bound address.
    pub addr: SocketAddr,
    /// The access token the page's URL carries (`http://ADDR/?token=TOKEN`).
    pub token: String,
    /// Cases this annotator has accepted already, and the cases of their schedule.
    pub done: usize,
    /// See `done`.
    pub total: usize,
}

/// Open (or continue) the study in `opts.out`, call `ready` once the page listens, and serve until the process
/// ends. Bad images, folders or a study folder started with other settings are [`Error::Input`].
pub fn serve_study(opts: &StudyOptions, ready: impl FnOnce(Ready)) -> Result<()> {
    let mut list = match &opts.images {
        StudyImages::Folder { images, masks } => cases::from_folder(images, masks.as_deref())?,
        StudyImages::SpecTask { spec, task } => cases::from_spec(spec, task)?,
    };
    if opts.max_cases == Some(0) {
        return Err(Error::input("--max-cases must be at least 1"));
    }
    list = crate::data::limit(list, opts.max_cases, opts.seed);
    let weights = resolve_weights(opts.weights.as_deref())?;
    let sha = sha256_file(&weights)?;
    let model = LiteMedSam::from_pth(&weights, &candle_core::Device::Cpu)?;
    let arm = |label: &str, dir: Option<&Path>| -> Result<Arm> {
        Ok(Arm {
            label: label.into(),
            experts: dir.map(|d| ExpertSet::load(d, &model, &sha)).transpose()?,
        })
    };
    let arms = [
        arm("evosam", Some(&opts.experts))?,
        match &opts.compare {
            Compare::Base => arm("base", None)?,
            Compare::Experts(dir) => arm("compare", Some(dir))?,
        },
    ];
    let want = record(
        opts.seed,
        opts.design,
        [arms[0].label.clone(), arms[1].label.clone()],
        &list,
    );
    let session = Session::start(&opts.out, &opts.annotator, &want)?;
    let (done, total) = (session.current, session.slots.len());
    let cache = EmbeddingCache::new(&evosam_home().join("embeddings"), &sha)?;
    let engine = Engine {
        model,
        arms,
        cache: Some(cache),
        mask_prompt: opts.mask_prompt,
    };
    tables::write_tables(&opts.out)?;
    let token = super::new_token();
    let app = App::new(token.clone(), engine, list, session);
    app.start_prefetch();
    serve(app, opts.addr, move |addr| {
        ready(Ready {
            addr,
            token,
            done,
            total,
        })
    })
}
