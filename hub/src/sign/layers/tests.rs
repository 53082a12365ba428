use super::*;

/// One tar entry of a test layer. Names are written as given (not normalized by the tar
/// crate), long ones through a GNU long-name entry, as real image builders do.
enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Fifo(&'a str),
}

fn append(builder: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, name: &str, link: &str, data: &[u8]) {
    if name.len() > 99 {
        let mut long = tar::Header::new_gnu();
        long.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        long.set_entry_type(tar::EntryType::GNULongName);
        long.set_size(name.len() as u64 + 1);
        long.set_cksum();
        let mut bytes = name.as_bytes().to_vec();
        bytes.push(0);
        builder.append(&long, bytes.as_slice()).unwrap();
    }
    let mut header = tar::Header::new_gnu();
    let short = &name.as_bytes()[..name.len().min(99)];
    header.as_gnu_mut().unwrap().name[..short.len()].copy_from_slice(short);
    header.as_gnu_mut().unwrap().linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_entry_type(kind);
    header.set_size(data.len() as u64);
    header.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    builder.append(&header, data).unwrap();
}

fn tar_layer(entries: &[Entry]) -> (OciDescriptor, Vec<u8>) {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        match *entry {
            Entry::File(name, data) => append(&mut builder, tar::EntryType::Regular, name, "", data),
            Entry::Dir(name) => append(&mut builder, tar::EntryType::Directory, name, "", b""),
            Entry::Symlink(name, to) => append(&mut builder, tar::EntryType::Symlink, name, to, b""),
            Entry::Hardlink(name, to) => append(&mut builder, tar::EntryType::Link, name, to, b""),
            Entry::Fifo(name) => append(&mut builder, tar::EntryType::Fifo, name, "", b""),
        }
    }
    let blob = builder.into_inner().unwrap();
    let descriptor = OciDescriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar".to_owned(),
        digest: crate::sign::new_layer::sha256_digest(&blob),
        size: blob.len() as i64,
        ..Default::default()
    };
    (descriptor, blob)
}

/// Written path and bytes; selected path and the path written for it.
type Found = (Vec<(String, Vec<u8>)>, Vec<(String, String)>);

/// The selection of `globs` over `layers`.
fn select(globs: &[&str], layers: &[&[Entry]]) -> Result<Found, String> {
    let globs: Vec<String> = globs.iter().map(|g| (*g).to_owned()).collect();
    let patterns = compile_patterns(&globs).unwrap();
    let (descriptors, blobs): (Vec<_>, Vec<_>) = layers.iter().map(|l| tar_layer(l)).unzip();
    let selection = select_files(&descriptors, &blobs, &patterns).map_err(|e| e.reason)?;
    Ok((
        selection.files.into_iter().map(|(p, f)| (p, f.data)).collect(),
        selection.selected.into_iter().collect(),
    ))
}

fn files(list: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
    list.iter().map(|(p, d)| ((*p).to_owned(), d.to_vec())).collect()
}

#[test]
fn files_follow_the_layers_whiteouts_and_globs() {
    let (found, _) = select(
        &["/opt/lib/modules/6.1/*.ko"],
        &[
            &[
                Entry::File("opt/lib/modules/6.1/a.ko", b"a1"),
                Entry::File("./opt/lib/modules/6.1/b.ko", b"b1"),
                Entry::File("opt/lib/modules/6.1/c.ko", b"c1"),
                Entry::File("opt/lib/modules/6.1/sub/d.ko", b"deep"),
                Entry::File("opt/lib/modules/6.1/readme", b"text"),
            ],
            &[
                Entry::Dir("opt/lib/modules/6.1/"),
                Entry::File("opt/lib/modules/6.1/a.ko", b"a2"),
                Entry::File("opt/lib/modules/6.1/.wh.b.ko", b""),
                Entry::Dir("opt/lib/modules/6.1/c.ko"),
            ],
        ],
    )
    .unwrap();
    assert_eq!(found, files(&[("/opt/lib/modules/6.1/a.ko", b"a2")]));
}

#[test]
fn an_upper_directory_entry_keeps_the_lower_files() {
    let (found, _) = select(
        &["/m/*.ko"],
        &[
            &[Entry::File("m/a.ko", b"a"), Entry::File("m/b.ko", b"b")],
            &[Entry::Dir("m/"), Entry::Dir("m/b.ko/")],
        ],
    )
    .unwrap();
    assert_eq!(found, files(&[("/m/a.ko", b"a")]));
}

#[test]
fn an_opaque_whiteout_hides_the_lower_directory_but_not_its_own_layer() {
    for upper in [
        [
            Entry::Dir("m/"),
            Entry::File("m/.wh..wh..opq", b""),
            Entry::File("m/b.ko", b"b2"),
        ],
        // The whiteout after the file of the same layer: the file stays.
        [
            Entry::Dir("m/"),
            Entry::File("m/b.ko", b"b2"),
            Entry::File("m/.wh..wh..opq", b""),
        ],
    ] {
        let (found, _) = select(
            &["/m/*.ko"],
            &[
                &[Entry::File("m/a.ko", b"a"), Entry::File("m/b.ko", b"b")],
                &upper,
            ],
        )
        .unwrap();
        assert_eq!(found, files(&[("/m/b.ko", b"b2")]));
    }
}

#[test]
fn names_are_normalized_as_the_runtime_writes_them() {
    let long = format!("{}../x.ko", "deep/".repeat(30));
    let (found, selected) = select(
        &["/opt/*.ko", "/a/*.ko", "/*.ko", "/deep/**/x.ko"],
        &[&[
            Entry::File("opt//x.ko", b"1"),
            Entry::File("./a/./x.ko", b"2"),
            Entry::File("x/../x.ko", b"3"),
            Entry::File(&long, b"4"),
        ]],
    )
    .unwrap();
    let deep = format!("/{}x.ko", "deep/".repeat(29));
    assert_eq!(
        found,
        files(&[
            ("/a/x.ko", b"2"),
            (&deep, b"4"),
            ("/opt/x.ko", b"1"),
            ("/x.ko", b"3")
        ])
    );
    assert!(
        selected
            .iter()
            .all(|(p, _)| !p.contains("..") && !p.contains("//"))
    );
    // A name that climbs above the root is refused, not written somewhere else.
    let error = select(&["/*.ko"], &[&[Entry::File("../../x.ko", b"1")]]).unwrap_err();
    assert!(error.contains("climbs above the root"), "{error}");
}

#[test]
fn hard_links_are_the_file_they_name() {
    // In a lower layer and in the same layer.
    let (found, selected) = select(
        &["/m/*.ko"],
        &[
            &[Entry::File("lib/real.ko", b"real")],
            &[
                Entry::Hardlink("m/a.ko", "lib/real.ko"),
                Entry::File("m/b.src", b"b"),
                Entry::Hardlink("m/b.ko", "./m/b.src"),
            ],
        ],
    )
    .unwrap();
    assert_eq!(found, files(&[("/m/a.ko", b"real"), ("/m/b.ko", b"b")]));
    assert_eq!(
        selected,
        vec![
            ("/m/a.ko".to_owned(), "/m/a.ko".to_owned()),
            ("/m/b.ko".to_owned(), "/m/b.ko".to_owned())
        ]
    );
    let error = select(&["/m/*.ko"], &[&[Entry::Hardlink("m/a.ko", "missing.ko")]]).unwrap_err();
    assert!(error.contains("hard link to /missing.ko"), "{error}");
}

#[test]
fn symlinks_are_followed_to_the_file_that_gets_signed() {
    let (found, selected) = select(
        &["/m/*.ko"],
        &[&[
            Entry::File("real/a.ko", b"a"),
            Entry::Symlink("m/a.ko", "../real/a.ko"),
            // Absolute, climbing above the root (clamped, as in a chroot), through a linked directory.
            Entry::Symlink("r", "/real"),
            Entry::Symlink("m/b.ko", "../../../../r/a.ko"),
        ]],
    )
    .unwrap();
    assert_eq!(found, files(&[("/real/a.ko", b"a")]));
    assert_eq!(
        selected,
        vec![
            ("/m/a.ko".to_owned(), "/real/a.ko".to_owned()),
            ("/m/b.ko".to_owned(), "/real/a.ko".to_owned())
        ]
    );
}

#[test]
fn a_selected_path_that_is_not_a_regular_file_fails() {
    for (entries, expected) in [
        (
            vec![Entry::Symlink("m/a.ko", "gone.ko")],
            "/m/gone.ko, which is not in the image",
        ),
        (
            vec![Entry::Symlink("m/a.ko", "b.ko"), Entry::Symlink("m/b.ko", "a.ko")],
            "levels of symlinks",
        ),
        (vec![Entry::Fifo("m/a.ko")], "Fifo"),
        (
            vec![Entry::Symlink("m/a.ko", "/m/d"), Entry::Dir("m/d")],
            "a directory",
        ),
    ] {
        let error = select(&["/m/*.ko"], &[&entries]).unwrap_err();
        assert!(error.contains(expected), "{error} should say {expected}");
        assert!(error.contains("sign-image cannot sign it"), "{error}");
    }
}

#[test]
fn relative_and_empty_globs_are_refused() {
    let refused = |globs: &[&str]| {
        let globs: Vec<String> = globs.iter().map(|g| (*g).to_owned()).collect();
        compile_patterns(&globs).map(|_| ()).unwrap_err()
    };
    assert_eq!(refused(&[]), "filesToSign is empty");
    assert!(refused(&["lib/modules/*.ko"]).contains("is not an absolute path"));
    assert!(refused(&["/a/["]).starts_with("filesToSign entry \"/a/[\""));
}
