//! What a generation was started from, kept so that a release that fails
//! its probation can be rolled back: the configuration (worker count,
//! COMMAND, options) and the program file.
//!
//! A deploy replaces the program file by renaming a new one over the path,
//! so the path no longer leads to the release that worked. The master keeps
//! the old file open instead: the open descriptor holds the old inode,
//! whatever happens to the path, and a rollback writes it back out as an
//! executable file in the master's private directory and starts workers
//! from there.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::MasterConfig;

/// A generation's configuration and program file.
#[derive(Debug)]
pub struct Release {
    pub generation: u64,
    pub config: MasterConfig,
    /// The program file as it was when the generation started.
    program: File,
}

impl Release {
    /// Captures what `config` starts workers from now, for `generation`.
    pub fn capture(generation: u64, config: &MasterConfig) -> io::Result<Release> {
        Ok(Release {
            generation,
            config: config.clone(),
            program: File::open(&config.program)?,
        })
    }

    /// The configuration to start this release again: its program written
    /// back as an executable file in `dir`, in place of the path (which may
    /// lead to another release by now).
    pub fn restore(&self, dir: &Path) -> io::Result<MasterConfig> {
        let path = self.write_program(dir)?;
        let mut config = self.config.clone();
        config.program = path;
        Ok(config)
    }

    fn write_program(&self, dir: &Path) -> io::Result<PathBuf> {
        use std::io::{Seek, SeekFrom};
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(format!("program-{}", self.generation));
        if path.exists() {
            return Ok(path);
        }
        // Written under another name and renamed, so that no worker is ever
        // started from a half-written file.
        let staging = dir.join(format!(".program-{}.partial", self.generation));
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o755)
            .open(&staging)?;
        let mut program = &self.program;
        program.seek(SeekFrom::Start(0))?;
        io::copy(&mut program, &mut out)?;
        drop(out);
        std::fs::rename(&staging, &path)?;
        Ok(path)
    }
}
