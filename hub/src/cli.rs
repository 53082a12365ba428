//! Small pieces of command-line plumbing, kept out of `main.rs` so they can be tested.

use std::{
    fs,
    io::{self, Write},
    path::Path,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kmm_api::crds;

use crate::lint::{self, DocumentReport};

/// Writes CRDs as one YAML stream to `out`, or one file each into `dir`.
pub fn write_crds(
    list: &[CustomResourceDefinition],
    dir: Option<&Path>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match dir {
        None => out.write_all(crds::to_yaml_stream(list)?.as_bytes())?,
        Some(dir) => {
            fs::create_dir_all(dir)?;
            for (name, yaml) in crds::files(list)? {
                let path = dir.join(name);
                fs::write(&path, yaml)?;
                writeln!(out, "wrote {}", path.display())?;
            }
        }
    }
    Ok(())
}

/// Lints every file (`-` is standard input); prints one line per problem to `out` and a summary
/// to `err`. Returns whether everything was valid.
pub fn lint_files(files: &[String], out: &mut dyn Write, err: &mut dyn Write) -> io::Result<bool> {
    let (mut documents, mut problems, mut skipped) = (0, 0, 0);
    let mut valid = true;
    for file in files {
        let text = if file == "-" {
            io::read_to_string(io::stdin())
        } else {
            fs::read_to_string(file)
        };
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                writeln!(out, "{file}: cannot read: {e}")?;
                valid = false;
                continue;
            }
        };
        let reports = match lint::lint_str(&text) {
            Ok(r) => r,
            Err(e) => {
                writeln!(out, "{file}: {e}")?;
                valid = false;
                continue;
            }
        };
        for DocumentReport {
            index,
            object,
            checked,
            problems: found,
        } in reports
        {
            if !checked {
                skipped += 1;
                continue;
            }
            documents += 1;
            problems += found.len();
            valid &= found.is_empty();
            for p in found {
                writeln!(out, "{file}: document {index} ({object}): {p}")?;
            }
        }
    }
    writeln!(
        err,
        "{documents} document(s) checked, {problems} problem(s){}",
        if skipped > 0 {
            format!(", {skipped} document(s) of other kinds skipped")
        } else {
            String::new()
        }
    )?;
    Ok(valid)
}

/// Prints where a bundle went and how many entries failed (its manifest.yaml lists them). A
/// partial bundle is still a success: it is what there was to collect.
pub fn report_gather((dir, failed): (std::path::PathBuf, usize), out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "wrote {} ({failed} entries could not be collected; see manifest.yaml)",
        dir.display()
    )
}
