"""The demo: the paper's whole lifecycle on a generated collection of real video files.

    generate videos (ffmpeg) ─> extract L3-iMAC regions (ResNet50) ─> fit PCA whitening
    ─> train the ViSiL teacher on labelled triplets ─> teacher labels pairs of the training videos
    ─> distil S^f_A, S^f_B, S^c ─> train the selector ─> export SavedModels ─> serve over gRPC
    ─> index the evaluation collection through the server ─> search with DnS ─> report

Two collections are generated: one to train on (its labels only train the teacher; the students
and the selector learn from the teacher alone, as in DnS) and one held out for the evaluation.
Every stage writes its result under ``--output`` and a rerun reuses what is there, so an
interrupted demo continues where it stopped and a finished one only reports again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import resource
import time

import keras
import numpy as np

from dns_tf.data.feature_files import open_features, open_writer
from dns_tf.data.pairs import load_pairs, save_pairs
from dns_tf.demo import say
from dns_tf.demo.report import evaluate_demo
from dns_tf.features.batch import RESNET_ENV, ExtractConfig, extract_to_writer
from dns_tf.features.extractor import FeatureExtractor
from dns_tf.features.whitening import PCAComponents, PCAWhitening, fit_whitening
from dns_tf.flags import field
from dns_tf.models import load_model
from dns_tf.synthetic.videos import CollectionConfig, generate_collection
from serving.export import export_models
from serving.model_config import MODELS_CONFIG_FILE
from training.config import (DistillationConfig, PairsConfig, SelectorTrainingConfig,
                             TeacherTrainingConfig)
from training.distill import train_student
from training.pairs import label_pairs, relabel_pairs
from training.selector import selector_pairs, split_pairs, train_selector
from training.teacher import train_teacher

REPO = pathlib.Path(__file__).resolve().parents[2]
REFERENCE_RESNET = REPO.parent / "shared" / "reference" / "checkpoints" / "resnet50_torchvision.npz"
TEACHER_DIMS = 1024
STUDENT_DIMS = 512


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Sizes chosen so the demo takes minutes on two CPU cores."""

    output: str = field("demo_output", "where everything goes (reused by a rerun)")
    seed: int = field(0, "seed of the collections and of every training run")
    resnet: str | None = field(
        None, "torchvision ResNet50 weights (.pth/.npz); default: $DNS_TF_RESNET50, else "
              "../shared/reference's, else keras.applications ImageNet weights (downloaded)")
    train_queries: int = field(8, "query videos of the training collection")
    eval_queries: int = field(12, "query videos of the evaluation collection")
    train_distractors: int = field(16, "unrelated videos in the training collection")
    eval_distractors: int = field(48, "unrelated videos in the evaluation collection (each "
                                      "query's 5 relevant videos are then 4 % of the database's "
                                      "132; in FIVR-200K they are well under 1 %)")
    duplicate_scenes: int = field(2, "duplicate-scene derivatives per query: trims, splices, "
                                     "picture-in-picture")
    inserted_copies: int = field(1, "derivatives per query that hide a few seconds of it inside "
                                    "a long unrelated video")
    seconds: float = field(8.0, "length of a source video in seconds")
    host_seconds: float = field(24.0, "length of the long videos that hide a few seconds of a "
                                      "query")
    video_size: tuple[int, ...] = field(
        (224, 168), "width and height of the generated videos (the CNN reads 224x224 crops of "
                    "frames resized to 256 on the shorter side; a third faster than 320x240)")
    teacher_epochs: int = field(8, "epochs of teacher training")
    student_epochs: int = field(30, "epochs of distillation (one pair per anchor per epoch)")
    fine_learning_rate: float | None = field(
        1e-3, "Adam learning rate of the fine students' distillation (None: the paper's 1e-4, "
              "which needs the paper's 300 epochs over 100K videos; S^c keeps its 1e-5)")
    student_augmentation: bool = field(
        False, "the paper's temporal augmentations of the students' training videos (they "
               "double the frames of a tenth of them, which doubles the padded batches: twice "
               "the distillation time)")
    selector_epochs: int = field(10, "epochs of selector training")
    percentages: tuple[float, ...] = field((5.0, 10.0, 25.0, 50.0),
                                           "DnS operating points: % of the database re-ranked")
    progress: bool = field(True, "progress bars")


class Demo:
    """The stages of the demo; each returns its product, building it only if it is missing."""

    def __init__(self, config: DemoConfig):
        self.config = config
        self.root = pathlib.Path(config.output)
        for folder in ("videos", "features", "models", "export", "index"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    # --------------------------------------------------------------------------------- data
    def collections(self):
        made = {}
        for split, seed, queries, distractors in (
                ("train", self.config.seed + 1, self.config.train_queries,
                 self.config.train_distractors),
                ("eval", self.config.seed, self.config.eval_queries, self.config.eval_distractors)):
            say(f"{split} collection: {queries} queries, {distractors} distractors")
            made[split] = generate_collection(
                self.root / "videos" / split,
                CollectionConfig(seed=seed, num_queries=queries, num_distractors=distractors,
                                 duplicate_scenes=self.config.duplicate_scenes,
                                 inserted_copies=self.config.inserted_copies,
                                 seconds=self.config.seconds,
                                 host_seconds=self.config.host_seconds,
                                 width=self.config.video_size[0],
                                 height=self.config.video_size[1]),
                progress=self.config.progress)
        return made

    def _resnet(self) -> str | None:
        for candidate in (self.config.resnet, os.environ.get(RESNET_ENV),
                          REFERENCE_RESNET if REFERENCE_RESNET.is_file() else None):
            if candidate:
                return str(candidate)
        return None

    def region_features(self, collections):
        """Raw 3840-d L3-iMAC regions of both collections, float16 HDF5."""
        extractor = None
        paths = {}
        for split, collection in collections.items():
            path = self.root / "features" / f"{split}_l3imac.h5"
            with open_writer(path, dtype="float16") as writer:
                videos = [(video_id, str(p)) for video_id, p in collection.paths().items()]
                if any(video_id not in writer for video_id, _ in videos) and extractor is None:
                    resnet = self._resnet()
                    say(f"feature extractor: ResNet50 from {resnet or 'keras.applications'}")
                    extractor = (FeatureExtractor.from_official(resnet) if resnet
                                 else FeatureExtractor.from_keras_applications())
                report = extract_to_writer(extractor, videos, writer, ExtractConfig(),
                                           progress=self.config.progress)
            if report["failed"]:
                raise RuntimeError(f"could not extract {report['failed']}")
            if report["extracted"]:
                say(f"{split}: {report['frames']} frames at "
                     f"{report['frames_per_second']:.1f} frames/s")
            paths[split] = path
        return {split: open_features(path) for split, path in paths.items()}

    def whitened_features(self, raw, dims: int):
        """PCA-whitened regions of ``dims`` components, the whitening fitted on training videos.

        The released models use a PCA learnt from 1M region vectors (VCDB); the demo learns its
        own from the training collection's few thousand, which supports fewer reliable
        components, so the teacher reads 1024 of them rather than ViSiL's 3840.
        """
        pca_path = self.root / "features" / "pca.npz"
        if not pca_path.is_file():
            train = raw["train"]
            fit_whitening(train[v] for v in train.ids()).save(pca_path)
        whitening = PCAWhitening.from_components(PCAComponents.load(pca_path), dims=dims)
        features = {}
        for split, source in raw.items():
            path = self.root / "features" / f"{split}_pca{dims}.h5"
            with open_writer(path, dtype="float32") as writer:
                for video_id in source.ids():
                    if video_id not in writer:
                        writer.write(video_id, np.asarray(whitening(source[video_id])))
            features[split] = open_features(path)
        return features

    # ----------------------------------------------------------------------------- training
    def teacher(self, collection, features):
        path = self.root / "models" / "teacher" / "teacher.keras"
        if path.is_file():
            return load_model(path)
        triplets = labelled_triplets(collection, self.config.seed)
        say(f"teacher: {len(triplets)} labelled triplets, {self.config.teacher_epochs} epochs")
        # A higher learning rate than ViSiL's 1e-5: the demo trains from scratch in minutes.
        config = TeacherTrainingConfig(dims=TEACHER_DIMS, epochs=self.config.teacher_epochs,
                                       seed=self.config.seed, learning_rate=1e-3)
        self._seed_initial_weights()
        return train_teacher(features, triplets, config, str(path.parent),
                             verbose=self._verbose()).network

    def teacher_pairs(self, teacher, features, collection):
        path = self.root / "models" / "teacher_pairs.pk"
        if not path.is_file():
            say("teacher labels the training videos' pairs")
            pairs = label_pairs(teacher, features, PairsConfig(seed=self.config.seed),
                                progress=self.config.progress)
            threshold = separating_threshold(pairs.pairs, pairs.index, collection)
            say(f"positive pool: teacher similarity >= {threshold:.3f}")
            save_pairs(path, pairs.index, split_pools(pairs.pairs, threshold))
        return load_pairs(path)

    def students(self, pairs, features):
        settings = {
            "fg_att": dict(student_type="fine-grained", attention=True),
            "fg_bin": dict(student_type="fine-grained", attention=False, binarization=True),
            # A smaller S^c than the paper's (64 clusters, 1024 dims, 2048-wide feed-forward):
            # distilled from 46 training videos, the full size fits them and then over-scores
            # unrelated unseen videos by ~0.19 on average (0.04 at this size), which would
            # break DnS's merging of coarse and fine scores.
            "cg": dict(student_type="coarse-grained", netvlad_clusters=8, netvlad_outdims=256,
                       transformer_feedforward_dims=512),
        }
        students = {}
        for name, options in settings.items():
            path = self.root / "models" / name / "student.keras"
            if path.is_file():
                students[name] = load_model(path)
                continue
            say(f"distilling {name}: {self.config.student_epochs} epochs")
            config = DistillationConfig(epochs=self.config.student_epochs, seed=self.config.seed,
                                        learning_rate=(self.config.fine_learning_rate
                                                       if name != "cg" else None),
                                        augmentation=self.config.student_augmentation,
                                        **options)
            self._seed_initial_weights()
            students[name] = train_student(features, pairs, config, str(path.parent),
                                           verbose=self._verbose()).network
        return students

    def selector(self, students, pairs, features):
        """The selector learns where S^c and S^f_A disagree on the teacher's pairs."""
        path = self.root / "models" / "selector" / "selector.keras"
        if path.is_file():
            return load_model(path)
        # Threshold 0.1, not the paper's 0.2: how much students distilled from 46 videos disagree
        # varies between runs (one run had only 27 of 1863 pairs above 0.2, too few to learn).
        config = SelectorTrainingConfig(epochs=self.config.selector_epochs, seed=self.config.seed,
                                        threshold=0.1, pairs_per_class=512)
        labelled = selector_pairs(
            relabel_pairs(students["fg_att"], features, pairs, progress=self.config.progress),
            relabel_pairs(students["cg"], features, pairs, progress=self.config.progress),
            threshold=config.threshold)
        train, held_out = split_pairs(labelled, held_out_fraction=0.1, seed=self.config.seed)
        say(f"selector: {len(train)} pairs ({int(train.labels.sum())} to re-rank), "
             f"{self.config.selector_epochs} epochs")
        self._seed_initial_weights()
        return train_selector(features, train, held_out, config, str(path.parent),
                              verbose=self._verbose()).network

    def _seed_initial_weights(self):
        # Each network starts from weights drawn from --seed alone, not from whatever the stages
        # before it left in the global generators (which depends on which stages were cached):
        # S^c, distilled from so few videos, keeps most of its ranking from its initial weights.
        keras.utils.set_random_seed(self.config.seed)

    def _verbose(self):
        return 2 if self.config.progress else 0

    # ---------------------------------------------------------------------------- serving
    def export(self, students, selector, teacher):
        base = self.root / "export"
        if not (base / MODELS_CONFIG_FILE).is_file():
            say("exporting SavedModels")
            export_models(base, students["cg"], students["fg_att"], selector, teacher=teacher)
        return base / MODELS_CONFIG_FILE

    def run(self) -> dict:
        clock = StageClock(self.root / "timings.json")
        with clock("generate videos"):
            collections = self.collections()
        with clock("extract features"):
            raw = self.region_features(collections)
        with clock("whiten"):
            teacher_features = self.whitened_features(raw, TEACHER_DIMS)
            features = self.whitened_features(raw, STUDENT_DIMS)
        with clock("train teacher"):
            teacher = self.teacher(collections["train"], teacher_features["train"])
        with clock("teacher labels pairs"):
            pairs = self.teacher_pairs(teacher, teacher_features["train"], collections["train"])
        with clock("distil students"):
            students = self.students(pairs, features["train"])
        with clock("train selector"):
            selector = self.selector(students, pairs, features["train"])
        with clock("export"):
            models_config = self.export(students, selector, teacher)

        with clock("serve, index, search, report"):
            results = evaluate_demo(self.root, collections["eval"], teacher,
                                    teacher_features["eval"], students, selector,
                                    features["eval"], models_config, self.config.percentages)
        say("stages (wall / CPU seconds, this run): " + ", ".join(
            f"{name} {times['wall_s']:.0f}/{times['cpu_s']:.0f}"
            for name, times in clock.stages.items()))
        return results


class StageClock:
    """Wall and CPU seconds of each stage of this run, written to ``path`` after each stage.

    CPU seconds count this process's threads and its finished child processes (ffmpeg): on a
    machine shared with other jobs they say what a quiet machine would need, wall time does not.
    """

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.stages = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        wall, cpu = time.perf_counter(), _cpu_seconds()
        yield
        self.stages[name] = {"wall_s": round(time.perf_counter() - wall, 1),
                             "cpu_s": round(_cpu_seconds() - cpu, 1)}
        self.path.write_text(json.dumps(self.stages, indent=1) + "\n", encoding="utf-8")


def _cpu_seconds() -> float:
    own, children = (resource.getrusage(who)
                     for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def separating_threshold(pairs: dict, index, collection) -> float:
    """The teacher similarity between its typical related and unrelated training pair.

    The pools of positives and negatives only steer which pairs distillation samples (students
    learn the similarities themselves). ViSiL's threshold 0 assumes unrelated pairs score below 0,
    which a teacher trained from scratch in minutes need not do (one scored every pair of the
    training videos >= 0.38), so the demo splits halfway between the medians of the training
    collection's related and unrelated pairs.
    """
    related, unrelated = [], []
    for query, pools in pairs.items():
        sources = set(collection.videos[index[query]].contains)
        for pool in pools.values():
            for target, similarity in pool.items():
                shared = sources & set(collection.videos[index[target]].contains)
                (related if shared else unrelated).append(similarity)
    if not related or not unrelated:
        raise RuntimeError("the teacher's pairs hold no related or no unrelated training pair")
    return float((np.median(related) + np.median(unrelated)) / 2)


def split_pools(pairs: dict, threshold: float) -> dict:
    """The same scored pairs, positives being those at or above ``threshold``."""
    split = {}
    for query, pools in pairs.items():
        scored = {t: s for pool in pools.values() for t, s in pool.items()}
        split[query] = {"positives": {t: s for t, s in scored.items() if s >= threshold},
                        "negatives": {t: s for t, s in scored.items() if s < threshold}}
    return split


def labelled_triplets(collection, seed: int, per_anchor: int = 2) -> list[tuple[str, str, str]]:
    """(anchor, positive, negative) ids from a generated collection's labels.

    Videos made from the same source (the query, its near-duplicates and duplicate scenes) are
    positives of each other; every other video is a negative. Half the negatives are hard ones
    where the collection has them: videos with the anchor's look (a query's siblings) that do not
    contain its source, as FIVR's videos of the same event.
    """
    rng = np.random.default_rng(seed)
    groups = {}
    for video_id, video in collection.videos.items():
        for source in video.contains or {video.source: "ND"}:
            groups.setdefault(source, set()).add(video_id)
    groups = {source: sorted(members) for source, members in groups.items() if len(members) > 1}
    everything = sorted(collection.videos)
    triplets = []
    for source, members in groups.items():
        others = [v for v in everything if v not in members]
        family = collection.videos[source].family or source
        hard = [v for v in others if collection.videos[v].family == family]
        for anchor in members:
            for n in range(per_anchor):
                positive = rng.choice([m for m in members if m != anchor])
                negative = rng.choice(hard if hard and n % 2 else others)
                triplets.append((anchor, str(positive), str(negative)))
    return triplets
