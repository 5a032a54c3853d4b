#!/usr/bin/env bash
# A real multi-scene dataset: the chairs of Debian's sweethome3d-furniture package (textured OBJ+MTL models from the
# Sweet Home 3D libraries of Scopia, BlendSwap, Kator Legaz; CC-BY-3.0 / CC0), rendered by `ns-3dae-convert meshes`
# with the generator's camera rig into outputs/data/chairs (docs/converters.md).
#
#   bash scripts/make_real_dataset.sh                # every chair: 24 views of 128², 4 test views each
#   LIMIT=32 WORKERS=2 bash scripts/make_real_dataset.sh
#
# Steps, each skipped when its result is already there (so a second run, or one after an interruption, only does
# what is missing): `apt-get download` of the .deb into outputs/real/debs, `dpkg -x` into outputs/real/pkg, the
# chairs' model folders out of the .sh3f catalogues (zip files) into outputs/real/models/<library>-<model>/ with a
# <model>.obj.meta.json sidecar (catalogue entry, licence, Sweet Home 3D's modelRotation), then
# `ns-3dae-convert meshes --resume --skip-bad` (finished scenes with the same settings are kept).
#
# Which models: catalogue entries (PluginFurnitureCatalog.properties of each .sh3f) whose name contains "chair"
# (chairs, armchairs, children's and high chairs), except wheelchairs, deck/beach/relax chairs (loungers) and the
# armchair ottoman; stools have no back and are left out too.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PACKAGE=sweethome3d-furniture
WORK="${WORK:-outputs/real}"
DATA="${DATA:-outputs/data/chairs}"
VIEWS="${VIEWS:-24}"
TEST_VIEWS="${TEST_VIEWS:-4}"
RESOLUTION="${RESOLUTION:-128}"
WORKERS="${WORKERS:-1}"
LIMIT="${LIMIT:-}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
if [ -z "${VIRTUAL_ENV:-}" ]; then
  # shellcheck source=/dev/null
  source scripts/env.sh
fi
start=$(date +%s)
mkdir -p "$WORK/debs"
deb="$(ls "$WORK"/debs/${PACKAGE}_*.deb 2>/dev/null | head -n1 || true)"
if [ -z "$deb" ]; then
  echo "[real] apt-get download $PACKAGE (~120 MB) into $WORK/debs"
  (cd "$WORK/debs" && apt-get download "$PACKAGE")
  deb="$(ls "$WORK"/debs/${PACKAGE}_*.deb | head -n1)"
fi
if [ ! -d "$WORK/pkg/usr/share/sweethome3d/furniture" ]; then
  echo "[real] dpkg -x $deb $WORK/pkg"
  rm -rf "$WORK/pkg.tmp" && dpkg -x "$deb" "$WORK/pkg.tmp" && mv "$WORK/pkg.tmp" "$WORK/pkg"
fi
python - "$WORK/pkg" "$WORK/models" "$(basename "$deb" .deb)" <<'EOF'
"""Extract the chairs of every .sh3f catalogue into models/<library>-<model>/ with a .meta.json sidecar."""
import json, re, sys, zipfile
from pathlib import Path

pkg, models, deb = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
KEEP, DROP = re.compile(r"chair", re.I), re.compile(r"wheel|deck|beach|relax|ottoman", re.I)
copyright_file = pkg / "usr/share/doc/sweethome3d-furniture/copyright"
picked = new = 0
for sh3f in sorted((pkg / "usr/share/sweethome3d/furniture").glob("*.sh3f")):
    with zipfile.ZipFile(sh3f) as z:
        props = {}
        for line in z.read("PluginFurnitureCatalog.properties").decode("latin-1").splitlines():
            line = line.strip()
            if line and line[0] not in "#!" and "=" in line:
                key, value = line.split("=", 1)
                props[key.strip()] = value.strip().encode("latin-1").decode("unicode_escape")
        ids = sorted({int(m.group(1)) for k in props if (m := re.fullmatch(r"id#(\d+)", k))})
        for i in ids:
            name = props.get(f"name#{i}", "")
            if not KEEP.search(name) or DROP.search(name):
                continue
            model = props[f"model#{i}"].lstrip("/")  # e.g. scopia/chair3/chair3.obj
            library, folder = model.split("/")[0], model.rsplit("/", 1)[0]
            target = models / f"{library}-{Path(folder).name}"
            obj = target / f"{target.name}.obj"
            meta = obj.with_name(obj.name + ".meta.json")
            picked += 1
            if meta.is_file():
                continue
            target.mkdir(parents=True, exist_ok=True)
            for member in z.namelist():
                if member.startswith(folder + "/") and not member.endswith("/"):
                    dest = target / member[len(folder) + 1 :]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(z.read(member))
            (target / Path(model).name).rename(obj)  # <library>-<model>.obj: the scene's name
            entry = {"package": deb, "catalog": sh3f.name, "catalog_license": props.get("license"),
                     "copyright_file": str(copyright_file), "id": props.get(f"id#{i}"), "name": name,
                     "category": props.get(f"category#{i}"), "creator": props.get(f"creator#{i}"),
                     "model": model}
            if f"modelRotation#{i}" in props:
                entry["rotation"] = [float(v) for v in props[f"modelRotation#{i}"].split()]
            meta.write_text(json.dumps(entry, indent=1))
            new += 1
print(f"[real] {picked} chairs picked from the catalogues ({new} newly extracted) into {models}")
EOF
args=(--input "$WORK/models" --output "$DATA" --views-per-scene "$VIEWS" --test-views "$TEST_VIEWS"
      --resolution "$RESOLUTION" --workers "$WORKERS" --resume --skip-bad)
if [ -n "$LIMIT" ]; then args+=(--limit "$LIMIT"); fi
ns-3dae-convert meshes "${args[@]}"
echo "[real] $DATA: $(python -c "import json,sys; print(len(json.load(open(sys.argv[1]))))" "$DATA/scenes.json") scenes" \
  "x $VIEWS views of ${RESOLUTION}² ($TEST_VIEWS test views each), $(du -sh "$DATA" | cut -f1), in $(( $(date +%s) - start )) s"
