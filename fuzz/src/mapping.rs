//! Kernel mapping resolution: user-written literals and regexps against a kernel.

use kmm_api::{ModuleSpec, kernel::KernelMapper};
use serde_json::json;

/// The input's lines: the last is the kernel, each other a mapping (`=literal` or a regexp)
/// whose image template is the line after `|` (or a default one using every variable).
pub fn mapping(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines: Vec<&str> = text.split('\n').collect();
    let kernel = lines.pop().unwrap_or_default();
    let mappings: Vec<serde_json::Value> = lines
        .iter()
        .map(|line| {
            let (matcher, image) = line.split_once('|').unwrap_or((
                line,
                "reg.example/m:${KERNEL_FULL_VERSION}-${KERNEL_XYZ}-${MOD_NAME}",
            ));
            match matcher.strip_prefix('=') {
                Some(literal) => json!({"literal": literal, "containerImage": image}),
                None => json!({"regexp": matcher, "containerImage": image}),
            }
        })
        .collect();
    let spec = json!({
        "moduleLoader": {"container": {
            "modprobe": {"moduleName": "kmm_fuzz"},
            "kernelMappings": mappings,
        }},
        "selector": {},
    });
    let Ok(spec) = serde_json::from_value::<ModuleSpec>(spec) else {
        return;
    };
    let Ok(mapper) = KernelMapper::new(&spec, "fuzz", "ns") else {
        return;
    };
    let found = mapper.find(kernel);
    match mapper.resolve_trimmed(kernel) {
        Ok(resolved) => {
            assert!(found.is_some(), "resolved {kernel:?} without a matching mapping");
            let _ = resolved.build_target("fuzz", "ns");
            let _ = resolved.sign_source("fuzz", "ns");
        }
        Err(e) if e.is_no_mapping() => assert!(found.is_none(), "{kernel:?} matched but: {e}"),
        Err(_) => {}
    }
    let _ = mapper.resolve(kernel);
}
