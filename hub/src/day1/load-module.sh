#!/bin/sh
# kmm-fleet day1: replace in-tree kernel modules with an out-of-tree one from a kmod image,
# early in boot (the systemd unit orders this before network-pre.target and NetworkManager).
#
# Settings (environment; the generated unit sets the first four):
#   KMM_DAY1_IMAGE            the kmod image repository, without tag; the tag is `uname -r`
#   KMM_DAY1_MODULE           the out-of-tree module to load
#   KMM_DAY1_IN_TREE          in-tree modules to remove first (space-separated, may be empty)
#   KMM_DAY1_FIRMWARE_PATH    firmware directory inside the image (empty: no firmware)
#   KMM_DAY1_FIRMWARE_HOST    where firmware is copied on the node (default /var/lib/firmware)
#   KMM_DAY1_EXTRACT          shell command run with the image reference as $1 and an empty
#                             directory as $2; it must leave the image's files under $2
#                             (default: podman, pulling the image when it is not stored yet)
#   KMM_DAY1_MODPROBE         kmod's modprobe (default /usr/sbin/modprobe; an absolute path, so
#                             a shell's built-in applet of the same name is never used)
set -u

log() { echo "kmm-day1: $*"; }
fail() { echo "kmm-day1: error: $*" >&2; exit 1; }

image="${KMM_DAY1_IMAGE:?KMM_DAY1_IMAGE is not set}"
module="${KMM_DAY1_MODULE:?KMM_DAY1_MODULE is not set}"
in_tree="${KMM_DAY1_IN_TREE:-}"
firmware_path="${KMM_DAY1_FIRMWARE_PATH:-}"
firmware_host="${KMM_DAY1_FIRMWARE_HOST:-/var/lib/firmware}"
modprobe="${KMM_DAY1_MODPROBE:-/usr/sbin/modprobe}"
kernel="$(uname -r)"
ref="$image:$kernel"

podman_extract() {
    podman image exists "$1" || podman pull -q "$1" >/dev/null || return 1
    ctr="$(podman create "$1" /bin/true)" || return 1
    podman cp "$ctr:/opt" "$2/opt"
    rc=$?
    podman rm -f "$ctr" >/dev/null
    return $rc
}

# /proc/modules spells names with '_' where modprobe also accepts '-'.
is_loaded() { grep -q "^$(echo "$1" | tr - _) " /proc/modules; }

work="$(mktemp -d "${TMPDIR:-/tmp}/kmm-day1.XXXXXX")" || fail "cannot create a work directory"
trap 'rm -rf "$work"' EXIT

log "extracting $ref"
if [ -n "${KMM_DAY1_EXTRACT:-}" ]; then
    sh -c "$KMM_DAY1_EXTRACT" kmm-day1-extract "$ref" "$work"
else
    podman_extract "$ref" "$work"
fi
[ $? -eq 0 ] || fail "image $ref could not be pulled or extracted; in-tree modules left as they are"

tree="$work/opt/lib/modules/$kernel"
[ -d "$tree" ] || fail "image $ref has no /opt/lib/modules/$kernel; in-tree modules left as they are"
"$modprobe" -d "$work/opt" -n "$module" ||
    fail "module $module is not in image $ref (/opt/lib/modules/$kernel); in-tree modules left as they are"

if [ -n "$firmware_path" ]; then
    if [ -d "$work$firmware_path" ]; then
        mkdir -p "$firmware_host" && cp -a "$work$firmware_path/." "$firmware_host/" ||
            fail "cannot copy firmware from $firmware_path to $firmware_host"
        class_path=/sys/module/firmware_class/parameters/path
        [ -w "$class_path" ] && printf '%s' "$firmware_host" > "$class_path"
        log "firmware copied to $firmware_host"
    else
        log "image $ref has no $firmware_path; no firmware copied"
    fi
fi

removed=""
for m in $in_tree; do
    if is_loaded "$m"; then
        "$modprobe" -r "$m" || fail "cannot remove in-tree module $m (in use?)"
        removed="$removed $m"
        log "removed in-tree module $m"
    fi
done

if ! "$modprobe" -d "$work/opt" "$module"; then
    for m in $removed; do "$modprobe" "$m" || true; done
    fail "loading $module from $ref failed; in-tree modules reloaded:${removed:- none}"
fi
log "loaded $module from $ref"
