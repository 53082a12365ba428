//! An initramfs: a tree of files written as an uncompressed `newc` cpio archive, the format
//! the kernel unpacks into its root filesystem.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

#[derive(Debug, Clone)]
enum Entry {
    Dir,
    File { source: Source, mode: u32 },
    Symlink(String),
}

#[derive(Debug, Clone)]
enum Source {
    Path(PathBuf),
    Bytes(Vec<u8>),
}

/// Files of an initramfs, by absolute path inside it.
#[derive(Debug, Clone, Default)]
pub struct Initramfs {
    entries: BTreeMap<String, Entry>,
}

impl Initramfs {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// A directory (and its parents).
    pub fn dir(&mut self, path: &str) -> &mut Self {
        let path = normalize(path);
        let mut prefix = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            prefix.push('/');
            prefix.push_str(part);
            self.entries.entry(prefix.clone()).or_insert(Entry::Dir);
        }
        self
    }

    /// A copy of the host file `source` (symbolic links followed), with its permission bits.
    pub fn file(&mut self, path: &str, source: &Path) -> anyhow::Result<&mut Self> {
        let meta = fs::metadata(source).with_context(|| format!("reading {}", source.display()))?;
        if !meta.is_file() {
            bail!("{} is not a file", source.display());
        }
        #[cfg(unix)]
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
        #[cfg(not(unix))]
        let mode = 0o644;
        self.put(
            path,
            Entry::File {
                source: Source::Path(source.to_owned()),
                mode,
            },
        );
        Ok(self)
    }

    /// A file with the given contents and permission bits.
    pub fn bytes(&mut self, path: &str, contents: impl Into<Vec<u8>>, mode: u32) -> &mut Self {
        self.put(
            path,
            Entry::File {
                source: Source::Bytes(contents.into()),
                mode,
            },
        );
        self
    }

    /// A symbolic link at `path` pointing to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.put(path, Entry::Symlink(target.to_owned()));
        self
    }

    /// A dynamically linked host binary at `path`, with every shared library `ldd` reports
    /// at the path `ldd` reports it (so the loader finds them as on the host).
    pub fn binary(&mut self, path: &str, source: &Path) -> anyhow::Result<&mut Self> {
        self.file(path, source)?;
        for lib in shared_libraries(source)? {
            let inside = lib.display().to_string();
            if !self.entries.contains_key(&normalize(&inside)) {
                self.file(&inside, &lib)?;
            }
        }
        Ok(self)
    }

    /// Every file of the host directory `source`, recursively, under `path` (contents read now).
    pub fn tree(&mut self, path: &str, source: &Path) -> anyhow::Result<&mut Self> {
        self.dir(path);
        let mut entries: Vec<_> = fs::read_dir(source)
            .with_context(|| format!("listing {}", source.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("listing {}", source.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let inside = format!("{}/{name}", normalize(path));
            if entry.file_type()?.is_dir() {
                self.tree(&inside, &entry.path())?;
            } else {
                // Read now: the source may be a temporary directory gone by the time of `write`.
                let path = entry.path();
                let contents = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                #[cfg(unix)]
                let mode = std::os::unix::fs::PermissionsExt::mode(&entry.metadata()?.permissions()) & 0o7777;
                #[cfg(not(unix))]
                let mode = 0o644;
                self.bytes(&inside, contents, mode);
            }
        }
        Ok(self)
    }

    /// Whether something is at `path`.
    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(&normalize(path))
    }

    fn put(&mut self, path: &str, entry: Entry) {
        let path = normalize(path);
        if let Some((parent, _)) = path.rsplit_once('/')
            && !parent.is_empty()
        {
            self.dir(parent);
        }
        self.entries.insert(path, entry);
    }

    /// Writes the archive (uncompressed newc cpio) to `out`.
    pub fn write(&self, out: &Path) -> anyhow::Result<()> {
        let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        for (ino, (path, entry)) in (1..).zip(&self.entries) {
            let name = path.trim_start_matches('/');
            match entry {
                Entry::Dir => header(&mut w, ino, 0o040755, 0, name)?,
                Entry::Symlink(target) => {
                    header(&mut w, ino, 0o120777, target.len(), name)?;
                    w.write_all(target.as_bytes())?;
                    pad(&mut w, target.len())?;
                }
                Entry::File { source, mode } => match source {
                    Source::Bytes(bytes) => {
                        header(&mut w, ino, 0o100000 | mode, bytes.len(), name)?;
                        w.write_all(bytes)?;
                        pad(&mut w, bytes.len())?;
                    }
                    Source::Path(source) => {
                        let mut f =
                            File::open(source).with_context(|| format!("opening {}", source.display()))?;
                        let len = usize::try_from(f.metadata()?.len()).context("file too large")?;
                        header(&mut w, ino, 0o100000 | mode, len, name)?;
                        let copied = io::copy(&mut f, &mut w)?;
                        if copied != len as u64 {
                            bail!("{} changed while it was archived", source.display());
                        }
                        pad(&mut w, len)?;
                    }
                },
            }
        }
        header(&mut w, 0, 0, 0, "TRAILER!!!")?;
        w.flush().with_context(|| format!("writing {}", out.display()))?;
        Ok(())
    }
}

fn normalize(path: &str) -> String {
    let trimmed = path.trim_matches('/');
    format!("/{trimmed}")
}

/// A newc header and the padded name.
fn header(w: &mut impl Write, ino: u32, mode: u32, size: usize, name: &str) -> io::Result<()> {
    let size = u32::try_from(size).map_err(|_| io::Error::other("file larger than 4 GiB"))?;
    let namesize = name.len() + 1;
    let fields = [ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, namesize as u32, 0];
    let mut head = String::from("070701");
    for field in fields {
        head.push_str(&format!("{field:08x}"));
    }
    w.write_all(head.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad(w, 110 + namesize)
}

fn pad(w: &mut impl Write, len: usize) -> io::Result<()> {
    let rest = (4 - len % 4) % 4;
    w.write_all(&[0; 3][..rest])
}

/// The shared libraries of a host binary, from `ldd` (none for a static binary).
pub fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let output = Command::new("ldd").arg(binary).output().context("running ldd")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        if text.contains("not a dynamic executable")
            || String::from_utf8_lossy(&output.stderr).contains("not a dynamic")
        {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_ldd(&text)
}

fn parse_ldd(text: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("not found") {
            bail!("ldd: {line}");
        }
        if line.contains("statically linked") {
            continue;
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        if let Some(path) = path.split_whitespace().next().filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_every_library_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibzstd.so.1 => /lib/x86_64-linux-gnu/libzstd.so.1 (0x00007f5e)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f5e)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f5e)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libzstd.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tlibfoo.so => not found\n").is_err());
    }

    #[test]
    fn archive_is_read_back_by_cpio() {
        let dir = tempfile::tempdir().unwrap();
        let mut fs = Initramfs::new();
        fs.bytes("/etc/a/b.txt", "hello\n", 0o644)
            .bytes("/init", "#!/bin/sh\n", 0o755)
            .symlink("/sbin/x", "/init");
        let out = dir.path().join("i.cpio");
        fs.write(&out).unwrap();
        let listing = Command::new("cpio")
            .args(["-it", "--quiet", "-F"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(listing.status.success(), "{listing:?}");
        let names: Vec<String> = String::from_utf8(listing.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(names, ["etc", "etc/a", "etc/a/b.txt", "init", "sbin", "sbin/x"]);
        let extract = dir.path().join("x");
        std::fs::create_dir(&extract).unwrap();
        let status = Command::new("cpio")
            .args(["-id", "--quiet", "-F"])
            .arg(&out)
            .current_dir(&extract)
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(
            std::fs::read_to_string(extract.join("etc/a/b.txt")).unwrap(),
            "hello\n"
        );
        assert_eq!(
            std::fs::read_link(extract.join("sbin/x")).unwrap(),
            PathBuf::from("/init")
        );
    }
}
