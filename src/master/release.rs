//! What a generation was started from, kept so that a release that fails
//! its probation can be rolled back: the configuration (worker count,
//! COMMAND, options) and the program file.
//!
//! A deploy replaces the program file by renaming a new one over the path,
//! so the path no longer leads to the release that worked. The master keeps
//! the old file open instead: the open descriptor holds the old inode,
//! whatever happens to the path, and a rollback writes it back out as an
//! executable file in the master's private directory and starts workers
//! from there. Keeping and writing back are effects on the world, so the
//! supervisor asks for them through its `Effects`; a [`Release`] holds
//! whatever those hand it back ([`ProgramFile`] in the real master).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::MasterConfig;

/// A generation's configuration and its program, as `P` keeps it.
#[derive(Debug)]
pub struct Release<P> {
    pub generation: u64,
    pub config: MasterConfig,
    /// The program file as it was when the generation started.
    pub program: P,
}

/// A program file held open: the file as it was, whatever later happens
/// to its path.
#[derive(Debug)]
pub struct ProgramFile(File);

impl ProgramFile {
    pub fn open(path: &Path) -> io::Result<ProgramFile> {
        File::open(path).map(ProgramFile)
    }

    /// Writes the program back out as an executable file in `dir`, named
    /// for `generation`: its path. Written once per generation.
    pub fn write_out(&self, dir: &Path, generation: u64) -> io::Result<PathBuf> {
        use std::io::{Seek, SeekFrom};
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(format!("program-{generation}"));
        if path.exists() {
            return Ok(path);
        }
        // Written under another name and renamed, so that no worker is ever
        // started from a half-written file.
        let staging = dir.join(format!(".program-{generation}.partial"));
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o755)
            .open(&staging)?;
        let mut program = &self.0;
        program.seek(SeekFrom::Start(0))?;
        io::copy(&mut program, &mut out)?;
        drop(out);
        std::fs::rename(&staging, &path)?;
        Ok(path)
    }
}
