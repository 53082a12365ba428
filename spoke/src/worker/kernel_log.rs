//! The kernel log around one modprobe call: the lines the kernel wrote while it ran are the real
//! cause modprobe only hints at ("see dmesg"), so a failure reason carries the last few.

use std::{fs, io, process::Command};

/// Kernel log lines kept in a failure reason: the last few, each cut short.
const KERNEL_LINES: usize = 5;
const KERNEL_LINE_LEN: usize = 200;
/// `O_NONBLOCK` on Linux (x86, x86_64, arm, aarch64, riscv, s390x, powerpc); no libc binding is
/// needed for one flag.
const O_NONBLOCK: i32 = 0o4000;

/// The kernel log from a point on, best effort: `/dev/kmsg` read from its end (each reader has
/// its own position, so nothing is consumed), else the new lines of `dmesg`. Neither may be
/// readable in a pod without privileges; then there is nothing to add.
pub struct KernelLog {
    kmsg: Option<fs::File>,
    dmesg_before: Option<usize>,
}

impl KernelLog {
    /// Marks the current end of the log.
    pub fn start() -> Self {
        use std::{
            io::{Seek, SeekFrom},
            os::unix::fs::OpenOptionsExt,
        };
        let kmsg = fs::OpenOptions::new()
            .read(true)
            .custom_flags(O_NONBLOCK)
            .open("/dev/kmsg")
            .ok()
            .and_then(|mut f| f.seek(SeekFrom::End(0)).ok().map(|_| f));
        let dmesg_before = match kmsg {
            Some(_) => None,
            None => dmesg().map(|lines| lines.len()),
        };
        Self { kmsg, dmesg_before }
    }

    /// The lines written since [`KernelLog::start`], the last few, each cut short.
    pub fn lines_since(self) -> Vec<String> {
        let lines = match (self.kmsg, self.dmesg_before) {
            (Some(file), _) => read_kmsg(file),
            (None, Some(before)) => dmesg()
                .map(|all| all.into_iter().skip(before).collect())
                .unwrap_or_default(),
            (None, None) => Vec::new(),
        };
        tail(lines)
    }
}

/// The last [`KERNEL_LINES`] non-empty lines, each cut to [`KERNEL_LINE_LEN`] characters.
fn tail(mut lines: Vec<String>) -> Vec<String> {
    lines.retain(|l| !l.trim().is_empty());
    let skip = lines.len().saturating_sub(KERNEL_LINES);
    lines
        .into_iter()
        .skip(skip)
        .map(|l| {
            let l = l.trim();
            match l.char_indices().nth(KERNEL_LINE_LEN) {
                Some((cut, _)) => format!("{}...", &l[..cut]),
                None => l.to_owned(),
            }
        })
        .collect()
}

/// Records readable now from `/dev/kmsg` (one per read; `prio,seq,ts,flags;text`), as text.
fn read_kmsg(mut file: fs::File) -> Vec<String> {
    use std::io::Read;
    let mut lines = Vec::new();
    let mut buf = vec![0u8; 8192];
    for _ in 0..1000 {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let record = String::from_utf8_lossy(&buf[..n]);
                if let Some(text) = kmsg_text(&record) {
                    lines.push(text);
                }
            }
            // Records overwritten since the last read: the next read goes on with the oldest.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => continue,
            Err(_) => break, // WouldBlock: nothing more now
        }
    }
    lines
}

/// The message of one `/dev/kmsg` record (its first line, after the `;`).
fn kmsg_text(record: &str) -> Option<String> {
    let (_, text) = record.split_once(';')?;
    Some(text.lines().next().unwrap_or_default().to_owned())
}

/// `dmesg` output, one entry per line, without the `[ seconds]` prefix.
fn dmesg() -> Option<Vec<String>> {
    let out = Command::new("dmesg").output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| match l.strip_prefix('[').and_then(|r| r.split_once("] ")) {
                Some((_, text)) => text.to_owned(),
                None => l.to_owned(),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmsg_records_give_their_message() {
        assert_eq!(
            kmsg_text("3,1234,5678901,-;Key was rejected by service\n SUBSYSTEM=x\n").as_deref(),
            Some("Key was rejected by service")
        );
        assert_eq!(kmsg_text("garbage"), None);
    }

    #[test]
    fn kernel_lines_are_the_last_few_and_short() {
        let lines: Vec<String> = (0..8)
            .map(|i| format!("line {i}{}", "x".repeat(if i == 7 { 500 } else { 0 })))
            .chain([" ".to_owned()])
            .collect();
        let kept = tail(lines);
        assert_eq!(kept.len(), KERNEL_LINES);
        assert_eq!(kept[0], "line 3");
        assert_eq!(kept[4].len(), KERNEL_LINE_LEN + 3);
        assert!(kept[4].ends_with("..."));
    }
}
