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

/// Whether `pid` is `ancestor` or one of its descendants (a few generations
/// deep).
pub fn is_self_or_descendant(pid: u32, ancestor: u32) -> bool {
    let mut current = pid;
    for _ in 0..8 {
        if current == ancestor {
            return true;
        }
        match stat(current) {
            Some((_, parent)) if parent > 1 => current = parent,
            _ => return false,
        }
    }
    false
}

/// Live (not zombie) processes in process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            let Ok(text) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // After the command name: state, parent, process group.
            let Some((_, rest)) = text.rsplit_once(')') else {
                return false;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next().and_then(|s| s.chars().next());
            let group = fields.nth(1).and_then(|g| g.parse::<u32>().ok());
            group == Some(pgid) && !matches!(state, Some('Z' | 'X'))
        })
        .collect()
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

/// Whether `pid` waits for connections on every descriptor in `fds`: each is
/// registered in one of its epoll sets or one of its threads is blocked in
/// accept on it; a thread blocked in poll or select (which /proc does not
/// break down by descriptor) counts for all of them.
pub fn waits_for_connections(pid: u32, fds: std::ops::Range<i32>) -> bool {
    const ACCEPT: [u64; 2] = [43, 288]; // accept, accept4
    const POLL: [u64; 4] = [7, 23, 270, 271]; // poll, select, pselect6, ppoll
    let mut waited: Vec<i32> = epoll_interests(pid);
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let Ok(syscall) = fs::read_to_string(task.path().join("syscall")) else {
                continue;
            };
            let mut fields = syscall.split_whitespace();
            let Some(number) = fields.next().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            if POLL.contains(&number) {
                return true;
            }
            if ACCEPT.contains(&number) {
                let fd = fields
                    .next()
                    .and_then(|a| i32::from_str_radix(a.trim_start_matches("0x"), 16).ok());
                waited.extend(fd);
            }
        }
    }
    fds.clone().all(|fd| waited.contains(&fd))
}

/// The descriptors registered in any of `pid`'s epoll sets.
fn epoll_interests(pid: u32) -> Vec<i32> {
    let mut targets = Vec::new();
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return targets;
    };
    for entry in entries.flatten() {
        let is_epoll = fs::read_link(entry.path())
            .is_ok_and(|l| l.to_string_lossy() == "anon_inode:[eventpoll]");
        if !is_epoll {
            continue;
        }
        let info = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
        let Ok(info) = fs::read_to_string(info) else {
            continue;
        };
        for line in info.lines() {
            if let Some(rest) = line.strip_prefix("tfd:") {
                targets.extend(
                    rest.split_whitespace()
                        .next()
                        .and_then(|fd| fd.parse::<i32>().ok()),
                );
            }
        }
    }
    targets
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
