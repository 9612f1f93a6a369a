//! Advisory locks that stay correct on a shared file system with processes on many hosts.
//!
//! A lock is a small JSON file created with `O_CREAT|O_EXCL` (atomic on local file systems and on NFSv3+), holding
//! the owner's host name, pid, start time and a random token. A PID alone cannot tell whether the owner lives: it
//! names a process on *some* host. So the owner also keeps the file's modification time fresh (a heartbeat thread
//! touches it every [`HEARTBEAT`]), and a lock is stale when
//! - its host is this host and its pid is not a live process (a killed run on this machine: taken over at once), or
//! - its heartbeat is older than [`STALE_AFTER`] (any host: the owner was killed, lost its node, or is hung).
//!
//! The second rule assumes the hosts' clocks agree to well within [`STALE_AFTER`] (clusters run NTP). A stale lock
//! is broken by renaming it to a unique name and checking that the renamed file is the one judged stale, so two
//! processes breaking the same stale lock cannot both win.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How often the owner refreshes its lock's modification time.
pub const HEARTBEAT: Duration = Duration::from_secs(30);
/// A lock whose modification time is older than this is stale, whoever holds it.
pub const STALE_AFTER: Duration = Duration::from_secs(300);

/// What a lock file says about its owner.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Holder {
    /// Host name of the owner ([`hostname`]); its pid is only meaningful there.
    pub host: String,
    /// Process id of the owner on `host` (0 when an old-format lock file held no readable pid).
    pub pid: u32,
    /// RFC 3339 time the lock was taken.
    pub started: String,
    /// What holds it ("run", "cell zeroshot__seed0__given", ...).
    pub what: String,
    /// The Slurm job (`JOBID` or `ARRAYJOB_TASK`) of the owner, when it runs under Slurm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm_job: Option<String>,
    /// Random 64-bit hex tag of this acquisition, so that a process breaking a stale lock can tell it from a
    /// fresh one taken by someone else at the same path (empty for old-format files).
    pub token: String,
}

/// Whether a lock's owner is (probably) still running.
#[derive(Clone, Debug, PartialEq)]
pub enum Liveness {
    /// The heartbeat is fresher than [`STALE_AFTER`] and, when the owner runs on this host, its pid is live.
    Alive,
    /// Why it is considered dead.
    Stale(String),
}

/// A held lock; released (the file removed) on drop. A process killed without running destructors leaves the
/// file behind; the rules in the module docs make it stale.
pub struct Lock {
    path: PathBuf,
    token: String,
    stop: Arc<AtomicBool>,
    heartbeat: Option<std::thread::JoinHandle<()>>,
}

/// This machine's host name (as other hosts on the cluster see it in lock files).
pub fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown-host".into())
}

/// The Slurm job this process runs in, if any (`JOBID`, or `ARRAYJOB_TASK` for an array task).
pub fn slurm_job() -> Option<String> {
    let array = std::env::var("SLURM_ARRAY_JOB_ID").ok();
    let task = std::env::var("SLURM_ARRAY_TASK_ID").ok();
    match (array, task) {
        (Some(a), Some(t)) => Some(format!("{a}_{t}")),
        _ => std::env::var("SLURM_JOB_ID").ok(),
    }
}

fn pid_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    // a zombie has exited: its stat line has state Z after the command name
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// Read a lock file: its holder and whether it is alive. `None` when there is no lock file.
pub fn inspect(path: &Path) -> Option<(Holder, Liveness)> {
    let text = std::fs::read_to_string(path).ok()?;
    let age = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or_default();
    let holder = match serde_json::from_str::<Holder>(&text) {
        Ok(h) => h,
        Err(_) => {
            // an older evosam wrote only a pid; a half-written file has no owner worth waiting for
            let pid = text.trim().parse::<u32>().unwrap_or(0);
            let h = Holder {
                host: hostname(),
                pid,
                started: String::new(),
                what: "an evosam run".into(),
                slurm_job: None,
                token: String::new(),
            };
            let live = if pid != 0 && pid_alive(pid) && age < STALE_AFTER {
                Liveness::Alive
            } else {
                Liveness::Stale(format!(
                    "unreadable or old-format lock ({} bytes)",
                    text.len()
                ))
            };
            return Some((h, live));
        }
    };
    let live = if holder.host == hostname() && !pid_alive(holder.pid) {
        Liveness::Stale(format!(
            "pid {} is not running on {}",
            holder.pid, holder.host
        ))
    } else if age > STALE_AFTER {
        Liveness::Stale(format!(
            "no heartbeat for {} s (owner on {} killed or hung)",
            age.as_secs(),
            holder.host
        ))
    } else {
        Liveness::Alive
    };
    Some((holder, live))
}

impl Holder {
    /// "host pid N since T (Slurm job J)" for messages.
    pub fn describe(&self) -> String {
        let mut s = format!("{} on {} (pid {}", self.what, self.host, self.pid);
        if !self.started.is_empty() {
            s.push_str(&format!(", since {}", self.started));
        }
        if let Some(j) = &self.slurm_job {
            s.push_str(&format!(", Slurm job {j}"));
        }
        s.push(')');
        s
    }
}

impl Lock {
    /// Take the lock at `path` (its folder is created), breaking a stale one. `what` names the owner in messages.
    /// Fails with an input error naming the live owner when the lock is held.
    pub fn acquire(path: &Path, what: &str) -> Result<Lock> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let holder = Holder {
            host: hostname(),
            pid: std::process::id(),
            started: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            what: what.to_string(),
            slurm_job: slurm_job(),
            token: format!("{:016x}", rand::random::<u64>()),
        };
        let body = serde_json::to_vec(&holder).map_err(|e| Error::internal(e.to_string()))?;
        for _ in 0..3 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(mut f) => {
                    if let Err(e) = f.write_all(&body).and_then(|_| f.sync_all()) {
                        // a full disk: leave no half-written lock behind
                        drop(f);
                        let _ = std::fs::remove_file(path);
                        return Err(Error::io(path, e));
                    }
                    return Ok(Self::started(path, holder.token));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    match inspect(path) {
                        Some((h, Liveness::Alive)) => {
                            return Err(Error::input(format!(
                                "{} is locked by {}; wait for it, or remove the file if that process is gone",
                                path.display(),
                                h.describe()
                            )))
                        }
                        Some((h, Liveness::Stale(_))) => break_stale(path, &h)?,
                        None => {} // removed meanwhile: try again
                    }
                }
                Err(e) => return Err(Error::io(path, e)),
            }
        }
        Err(Error::input(format!(
            "{}: could not take the lock (another process keeps taking it)",
            path.display()
        )))
    }

    fn started(path: &Path, token: String) -> Lock {
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (path.to_path_buf(), stop.clone());
        let heartbeat = std::thread::Builder::new()
            .name("evosam-lock-heartbeat".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::park_timeout(HEARTBEAT);
                    if s.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Ok(f) = std::fs::File::options().append(true).open(&p) {
                        let _ = f.set_modified(SystemTime::now());
                    }
                }
            })
            .ok();
        Lock {
            path: path.to_path_buf(),
            token,
            stop,
            heartbeat,
        }
    }
}

/// Move a stale lock aside under a unique name; if what was moved is not the lock judged stale (another process
/// broke it and took a fresh one meanwhile), put that one back.
fn break_stale(path: &Path, judged: &Holder) -> Result<()> {
    let aside = path.with_file_name(format!(
        "{}.stale-{:016x}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        rand::random::<u64>()
    ));
    match std::fs::rename(path, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    }
    let moved: Option<Holder> = std::fs::read_to_string(&aside)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    if moved.as_ref().is_some_and(|m| m.token != judged.token) {
        // a live lock: restore it unless yet another one appeared (then that one wins and ours is dropped)
        let _ = std::fs::hard_link(&aside, path);
    }
    let _ = std::fs::remove_file(&aside);
    Ok(())
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.heartbeat.take() {
            h.thread().unpark();
            let _ = h.join();
        }
        // only remove the file if it is still ours
        let ours = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|t| serde_json::from_str::<Holder>(&t).ok())
            .is_some_and(|h| h.token == self.token);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_taker_is_refused_and_drop_releases() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub").join(".lock");
        let a = Lock::acquire(&p, "run").unwrap();
        let (h, live) = inspect(&p).unwrap();
        assert_eq!(live, Liveness::Alive);
        assert_eq!(h.pid, std::process::id());
        assert_eq!(h.host, hostname());
        let e = Lock::acquire(&p, "cell x").err().unwrap().to_string();
        assert!(e.contains("locked by run on"), "{e}");
        drop(a);
        assert!(!p.exists());
        let _b = Lock::acquire(&p, "cell x").unwrap();
    }

    fn write_holder(p: &Path, host: &str, pid: u32) {
        let h = Holder {
            host: host.into(),
            pid,
            started: "2020-01-01T00:00:00Z".into(),
            what: "cell y".into(),
            slurm_job: Some("7_3".into()),
            token: "t0".into(),
        };
        std::fs::write(p, serde_json::to_vec(&h).unwrap()).unwrap();
    }

    #[test]
    fn dead_local_pid_is_stale_at_once() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(".lock");
        // a pid above the kernel's pid_max is never alive
        write_holder(&p, &hostname(), 4_999_999);
        assert!(matches!(inspect(&p).unwrap().1, Liveness::Stale(_)));
        let l = Lock::acquire(&p, "cell y").unwrap();
        assert_eq!(inspect(&p).unwrap().0.token, l.token);
    }

    #[test]
    fn other_host_is_alive_until_the_heartbeat_is_old() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(".lock");
        // the pid is dead here, but it names a process on another host: only the heartbeat can tell
        write_holder(&p, "some-other-node", 4_999_999);
        let (h, live) = inspect(&p).unwrap();
        assert_eq!(live, Liveness::Alive);
        assert!(h.describe().contains("Slurm job 7_3"), "{}", h.describe());
        let e = Lock::acquire(&p, "cell y").err().unwrap().to_string();
        assert!(e.contains("some-other-node"), "{e}");
        let old = SystemTime::now() - STALE_AFTER - Duration::from_secs(5);
        std::fs::File::options()
            .append(true)
            .open(&p)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(matches!(inspect(&p).unwrap().1, Liveness::Stale(_)));
        let _l = Lock::acquire(&p, "cell y").unwrap();
    }

    #[test]
    fn breaking_keeps_a_fresh_lock_taken_meanwhile() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(".lock");
        // judged stale with token t0, but the file now holds a live lock with another token
        let live = Lock::acquire(&p, "run").unwrap();
        let judged = Holder {
            host: "x".into(),
            pid: 1,
            started: String::new(),
            what: String::new(),
            slurm_job: None,
            token: "t0".into(),
        };
        break_stale(&p, &judged).unwrap();
        assert_eq!(inspect(&p).unwrap().0.token, live.token);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
