//! Reading the process tree from /proc: the check picks workers to kill and
//! measures the master's memory, and the tests inspect what baton started.

use std::fs;

/// A process's state letter and parent pid, or `None` if it is gone.
pub fn stat(pid: u32) -> Option<(char, u32)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields resume after the last ')'.
    let mut fields = text.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Children of `parent`, each with its state letter (`Z` for a zombie).
pub fn children(parent: u32) -> Vec<(u32, char)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let (state, ppid) = stat(pid)?;
            (ppid == parent).then_some((pid, state))
        })
        .collect()
}

/// Children of `parent` that are alive (not zombies).
pub fn live_children(parent: u32) -> Vec<u32> {
    children(parent)
        .into_iter()
        .filter(|&(_, state)| state != 'Z' && state != 'X')
        .map(|(pid, _)| pid)
        .collect()
}

/// Resident memory of `pid` in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Open descriptors of `pid`.
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_itself_and_its_children() {
        let me = std::process::id();
        assert!(matches!(stat(me), Some(('R' | 'S', _))));
        assert!(rss_bytes(me).unwrap() > 0);
        assert!(fd_count(me).unwrap() >= 3);
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(live_children(me).contains(&child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!children(me).iter().any(|&(pid, _)| pid == child.id()));
    }
}
