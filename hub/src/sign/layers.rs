//! Which files `sign-image` signs: the layers are applied in order the way a container runtime
//! materializes them (names normalized, whiteouts and opaque directories, hard links sharing
//! their target's bytes, symlinks followed), and every path of the result that a `filesToSign`
//! glob selects must end up as a regular file whose bytes are signed. A selected path that
//! cannot be (a dangling link, a device, a name escaping the root) fails the command instead of
//! leaving an unsigned module in a "signed" image. Pure functions over the layer bytes; the
//! registry side is in [`super::image`], the layer written back in [`super::new_layer`].

use std::{
    collections::BTreeMap,
    io::Read,
    ops::Bound::{Included, Unbounded},
};

use flate2::read::GzDecoder;

use super::limits::{Bounded, MAX_EXPANDED_BYTES, MAX_FILE_BYTES, MAX_SELECTED_BYTES};
use glob::{MatchOptions, Pattern};
use oci_client::manifest::OciDescriptor;
use thiserror::Error;

/// A layer (or the image config) that cannot be read or written, or a selected path that
/// cannot be signed.
#[derive(Debug, Error)]
#[error("layer {digest}: {reason}")]
pub struct LayerError {
    /// The layer's digest, `(new)` for the layer being made.
    pub digest: String,
    /// What went wrong.
    pub reason: String,
}

/// Symlinks followed for one path before giving up, as the kernel's `MAXSYMLINKS`.
const MAX_SYMLINKS: usize = 40;

/// The `filesToSign` globs, checked: absolute paths, valid shell globs, at least one.
pub fn compile_patterns(globs: &[String]) -> Result<Vec<Pattern>, String> {
    if globs.is_empty() {
        return Err("filesToSign is empty".to_owned());
    }
    globs
        .iter()
        .map(|g| {
            if !g.starts_with('/') {
                return Err(format!("filesToSign entry {g:?} is not an absolute path"));
            }
            Pattern::new(g).map_err(|e| format!("filesToSign entry {g:?}: {e}"))
        })
        .collect()
}

/// `*` and `?` do not cross `/`, as in a shell.
pub fn match_options() -> MatchOptions {
    MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    }
}

/// A regular file of the image's filesystem, with the metadata the new layer keeps.
#[derive(Debug, Clone)]
pub struct ImageFile {
    /// The file's bytes.
    pub data: Vec<u8>,
    /// Permission bits, owner and modification time of the file in the image.
    pub meta: FileMeta,
}

/// What the new layer keeps of a file besides its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMeta {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
}

/// What `filesToSign` selects in the image.
#[derive(Debug, Default)]
pub struct Selection {
    /// The regular files to sign, by the absolute path the signed copy is written to: the
    /// selected path itself, or the file a selected symlink resolves to.
    pub files: BTreeMap<String, ImageFile>,
    /// Every selected path, with the path of the file that holds its bytes.
    pub selected: BTreeMap<String, String>,
}

/// Where the bytes of a regular file are: the entry's index in its layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Source {
    layer: usize,
    entry: usize,
    meta: FileMeta,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    File(Source),
    Dir,
    Symlink(String),
    /// Anything else, described for the error a selected one gets.
    Unsignable(String),
}

/// A path of the merged filesystem and the layer that put it there (an opaque whiteout hides
/// what lower layers put in a directory, not what its own layer did).
#[derive(Debug, Clone)]
struct Placed {
    node: Node,
    layer: usize,
}

/// The merged filesystem, by normalized absolute path.
#[derive(Debug, Default)]
struct View(BTreeMap<String, Placed>);

impl View {
    /// Removes `path` and everything below it, when `hide` says so.
    fn remove_tree(&mut self, path: &str, hide: impl Fn(&Placed) -> bool) {
        let prefix = format!("{}/", path.trim_end_matches('/'));
        let mut gone: Vec<String> = self
            .0
            .range::<str, _>((Included(prefix.as_str()), Unbounded))
            .take_while(|(p, _)| p.starts_with(&prefix))
            .filter(|(_, placed)| hide(placed))
            .map(|(p, _)| p.clone())
            .collect();
        if self.0.get(path).is_some_and(&hide) {
            gone.push(path.to_owned());
        }
        for p in gone {
            self.0.remove(&p);
        }
    }

    /// Applies one tar entry of layer `layer`.
    fn apply(&mut self, layer: usize, path: String, node: Node) {
        let (dir, name) = split(&path);
        if name == ".wh..wh..opq" {
            self.remove_tree(dir, |placed| placed.layer < layer);
            // The directory itself stays.
            if dir != "/" {
                self.0.entry(dir.to_owned()).or_insert(Placed {
                    node: Node::Dir,
                    layer,
                });
            }
            return;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            self.remove_tree(&join(dir, hidden), |_| true);
            return;
        }
        // A directory merges with the one below (declared or only implied by its files).
        let merge_dirs = node == Node::Dir && self.0.get(&path).is_none_or(|p| p.node == Node::Dir);
        if !merge_dirs {
            self.remove_tree(&path, |_| true);
        }
        self.0.insert(path, Placed { node, layer });
    }

    /// The regular file `path` resolves to, following symlinks (in the path's directories too),
    /// or why it does not resolve to one.
    fn resolve(&self, path: &str) -> Result<(String, Source), String> {
        let mut pending: Vec<String> = components(path).into_iter().rev().collect();
        let mut current: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(part) = pending.pop() {
            if part == ".." {
                current.pop();
                continue;
            }
            current.push(part);
            let here = format!("/{}", current.join("/"));
            match self.0.get(&here).map(|p| &p.node) {
                Some(Node::Symlink(target)) => {
                    hops += 1;
                    if hops > MAX_SYMLINKS {
                        return Err(format!("{path} has more than {MAX_SYMLINKS} levels of symlinks"));
                    }
                    current.pop();
                    if target.starts_with('/') {
                        current.clear();
                    }
                    pending.extend(components(target).into_iter().rev());
                }
                Some(Node::File(source)) if pending.is_empty() => return Ok((here, *source)),
                Some(Node::Dir) if !pending.is_empty() => {}
                None if !pending.is_empty() => {}
                Some(Node::Unsignable(what)) => return Err(format!("{path} resolves to {here}, {what}")),
                Some(Node::Dir) => return Err(format!("{path} resolves to {here}, a directory")),
                Some(Node::File(_)) => return Err(format!("{path} goes through {here}, a regular file")),
                None => return Err(format!("{path} resolves to {here}, which is not in the image")),
            }
        }
        Err(format!("{path} resolves to the root directory"))
    }
}

/// `a/b`, `./a/b`, `/a//b`, `a/./b` and `a/x/../b` as `/a/b`; `None` for the root itself.
/// A name that climbs above the root is an error: no runtime writes it where it says.
pub fn normalize(raw: &str) -> Result<Option<String>, String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(format!("the entry {raw:?} climbs above the root"));
                }
            }
            other => parts.push(other),
        }
    }
    Ok((!parts.is_empty()).then(|| format!("/{}", parts.join("/"))))
}

/// The components of a link target, `..` kept (it is resolved against what the path is).
fn components(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .map(str::to_owned)
        .collect()
}

fn split(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some(("", name)) => ("/", name),
        Some((dir, name)) => (dir, name),
        None => ("/", path),
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// The tar entries of one layer blob.
fn archive<'a>(layer: &OciDescriptor, blob: &'a [u8]) -> Result<tar::Archive<Box<dyn Read + 'a>>, String> {
    let inner: Box<dyn Read + 'a> = if layer.media_type.ends_with("gzip") {
        Box::new(GzDecoder::new(blob))
    } else if layer.media_type.ends_with(".tar") || layer.media_type.ends_with(".rootfs.diff.tar") {
        Box::new(blob)
    } else {
        return Err(format!(
            "unsupported layer media type {} (gzip or uncompressed tar only)",
            layer.media_type
        ));
    };
    let reader: Box<dyn Read + 'a> = Box::new(Bounded {
        inner,
        left: MAX_EXPANDED_BYTES,
    });
    Ok(tar::Archive::new(reader))
}

/// One tar entry of a layer blob (`'b`: the blob's bytes).
type LayerEntry<'a, 'b> = tar::Entry<'a, Box<dyn Read + 'b>>;

/// Walks the tar entries of the layers `wanted` picks (by index), in order, calling
/// `visit(layer, entry index, entry)`; the one place that opens layers, so both passes read
/// them alike. Stops at the first error, which names the layer's digest.
fn for_each_entry<'b>(
    layers: &[OciDescriptor],
    blobs: &'b [Vec<u8>],
    wanted: impl Fn(usize) -> bool,
    mut visit: impl FnMut(usize, usize, LayerEntry<'_, 'b>) -> Result<(), String>,
) -> Result<(), LayerError> {
    for (index, (layer, blob)) in layers.iter().zip(blobs).enumerate() {
        if !wanted(index) {
            continue;
        }
        let mut walk = || -> Result<(), String> {
            let mut archive = archive(layer, blob)?;
            for (entry_index, entry) in archive.entries().map_err(|e| e.to_string())?.enumerate() {
                visit(index, entry_index, entry.map_err(|e| e.to_string())?)?;
            }
            Ok(())
        };
        walk().map_err(|reason| LayerError {
            digest: layer.digest.clone(),
            reason,
        })?;
    }
    Ok(())
}

/// The merged filesystem of `layers`, without file contents.
fn merge(layers: &[OciDescriptor], blobs: &[Vec<u8>]) -> Result<View, LayerError> {
    let mut view = View::default();
    for_each_entry(
        layers,
        blobs,
        |_| true,
        |index, entry_index, entry| {
            let raw = entry.path().map_err(|e| e.to_string())?;
            let Some(path) = normalize(&raw.to_string_lossy())? else {
                return Ok(());
            };
            let node = node_of(&view, index, entry_index, &entry, &path)?;
            view.apply(index, path, node);
            Ok(())
        },
    )?;
    Ok(view)
}

/// What entry `entry_index` of layer `index` puts at `path`, given the layers below (`view`).
fn node_of(
    view: &View,
    index: usize,
    entry_index: usize,
    entry: &LayerEntry<'_, '_>,
    path: &str,
) -> Result<Node, String> {
    let header = entry.header();
    let kind = header.entry_type();
    let link = || -> Result<String, String> {
        let target = entry
            .link_name()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("the link {path} has no target"))?;
        Ok(target.to_string_lossy().into_owned())
    };
    Ok(if kind.is_file() {
        let meta = |e: std::io::Error| format!("{path}: {e}");
        Node::File(Source {
            layer: index,
            entry: entry_index,
            meta: FileMeta {
                mode: header.mode().map_err(meta)?,
                uid: header.uid().map_err(meta)?,
                gid: header.gid().map_err(meta)?,
                mtime: header.mtime().map_err(meta)?,
            },
        })
    } else if kind.is_dir() {
        Node::Dir
    } else if kind.is_symlink() {
        Node::Symlink(link()?)
    } else if kind.is_hard_link() {
        // A hard link is the file it names, as that file is when the link is applied.
        let target = normalize(&link()?)?.unwrap_or_else(|| "/".to_owned());
        match view.0.get(&target).map(|p| &p.node) {
            Some(Node::File(source)) => Node::File(*source),
            _ => Node::Unsignable(format!("a hard link to {target}, which is not a regular file")),
        }
    } else {
        Node::Unsignable(format!("a {kind:?} entry, not a regular file"))
    })
}

/// The files of the image that `patterns` select, with their bytes. Fails on a selected path
/// that is not, or does not resolve to, a regular file of the image.
pub fn select_files(
    layers: &[OciDescriptor],
    blobs: &[Vec<u8>],
    patterns: &[Pattern],
) -> Result<Selection, LayerError> {
    let view = merge(layers, blobs)?;
    let mut selection = Selection::default();
    let mut sources: BTreeMap<String, Source> = BTreeMap::new();
    for (path, placed) in &view.0 {
        if placed.node == Node::Dir || !patterns.iter().any(|p| p.matches_with(path, match_options())) {
            continue;
        }
        let (file, source) = view.resolve(path).map_err(|reason| LayerError {
            digest: layers
                .get(placed.layer)
                .map(|l| l.digest.clone())
                .unwrap_or_default(),
            reason: format!("{reason}: sign-image cannot sign it"),
        })?;
        selection.selected.insert(path.clone(), file.clone());
        sources.insert(file, source);
    }
    selection.files = read_sources(layers, blobs, sources)?;
    Ok(selection)
}

/// The bytes of the given entries, a second pass over the layers that holds only those.
fn read_sources(
    layers: &[OciDescriptor],
    blobs: &[Vec<u8>],
    sources: BTreeMap<String, Source>,
) -> Result<BTreeMap<String, ImageFile>, LayerError> {
    let mut wanted: BTreeMap<(usize, usize), Vec<(String, FileMeta)>> = BTreeMap::new();
    for (path, source) in sources {
        wanted
            .entry((source.layer, source.entry))
            .or_default()
            .push((path, source.meta));
    }
    let layers_wanted: Vec<usize> = wanted.keys().map(|(l, _)| *l).collect();
    let mut files = BTreeMap::new();
    let mut selected_bytes: u64 = 0;
    for_each_entry(
        layers,
        blobs,
        |index| layers_wanted.contains(&index),
        |index, entry_index, entry| {
            let Some(targets) = wanted.remove(&(index, entry_index)) else {
                return Ok(());
            };
            let size = entry.header().size().map_err(|e| e.to_string())?;
            selected_bytes = selected_bytes.saturating_add(size);
            if size > MAX_FILE_BYTES || selected_bytes > MAX_SELECTED_BYTES {
                let path = targets.first().map(|(p, _)| p.as_str()).unwrap_or_default();
                return Err(format!(
                    "{path} is {size} bytes: over the {MAX_FILE_BYTES}-byte limit of a file to sign, or \
                     the selected files together are over {MAX_SELECTED_BYTES} bytes"
                ));
            }
            let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            entry
                .take(size)
                .read_to_end(&mut data)
                .map_err(|e| e.to_string())?;
            for (path, meta) in targets {
                files.insert(
                    path,
                    ImageFile {
                        data: data.clone(),
                        meta,
                    },
                );
            }
            Ok(())
        },
    )?;
    Ok(files)
}

#[cfg(test)]
mod tests;
