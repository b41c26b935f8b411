"""The pipeline's families: one object each, saying what a family's variants are made of.

A family names the keys its variants may have, checks them, says where its training data
comes from and how the training stage records it, builds its datamodule, loads its trained
model, names the task its evaluation measures (vld.eval.variant) and the inputs that evaluation
reads. The validator (vld.pipeline.params) and the training and evaluation stages read
FAMILIES, and no code outside this module asks which family a variant is; adding a family is
one entry here plus its own data, datamodule, evaluation and report modules (docs/pipeline.md,
"Adding a family").

Torch-free: the validator imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from vld.errors import fail
from vld.pipeline import paths

if TYPE_CHECKING:
    from vld.model.config import ModelConfig
    from vld.pipeline.plan import Plan, Variant

COMMON_VARIANT_KEYS = ("schedule", "seed", "seeds", "train")


def require_name(where: str, name, known, noun: str, section: str) -> str:
    """`name` (a reference from one section of params.yaml to another) must be a key of `known`:
    else a one-line error at `where` saying what to name and what `section` has."""
    listing = f"{section} has: {', '.join(known) or 'none'}"
    if name is None:
        fail(where, f"missing: name a {noun} under {section} ({listing})")
    if name not in known:
        fail(where, f"names a missing {noun} {name!r} ({listing})")
    return name


class Family:
    name: str
    task: str  # what vld.eval.variant measures: igsm | knowledge | khop
    trained_by = "pretrain"  # the stage that trains it
    seeds_together = True  # its training stage trains the seeds as one stacked model (vld.train.stacked)
    has_curves = False  # whether curve_score gives learning curves (train.curve_every)
    variant_keys: tuple[str, ...] = ("model", "recipe")  # besides COMMON_VARIANT_KEYS
    # the paper's claims its results are checked against (vld.report.claims): "capacity" (claim 1),
    # "reasoning" (claims 2-5, per family), "retrofit" (claim 6), "lm_retrofit" (claim 6 from lm-eval)
    claim_set: str
    # whether its training may shard the model with train.strategy fsdp (the model names its
    # blocks: fsdp_blocks(), vld.train.run.lightning_strategy)
    fsdp = False

    # ---- validation (torch-free) ------------------------------------------------------
    def check_variant(self, spec: Mapping[str, Any], where: str, pipeline: "Plan") -> dict[str, Any]:
        """Family-specific keys of one variant -> Variant fields (model_name, data, source, ...)."""
        model_name = spec.get("model")
        if model_name is None:
            fail(f"{where}.model", "missing: every variant names a model under models:")
        if model_name not in pipeline.models:
            fail(f"{where}.model", f"unknown model {model_name!r} (known: {', '.join(pipeline.models) or 'none'})")
        return {"model_name": model_name}

    def base_model(self, extras: Mapping[str, Any], pipeline: "Plan") -> "ModelConfig":
        """The model the variant's schedule applies to (its base layers)."""
        return pipeline.models[extras["model_name"]]

    def fixed_train(self, extras: Mapping[str, Any], pipeline: "Plan") -> dict[str, Any]:
        """Train settings the data decides (merged last; the user may not set them)."""
        return {}

    def model_from_data(self, variant: "Variant", pipeline: "Plan") -> dict[str, int]:
        """Model settings its data decides, where params.yaml decides the data (else the data
        files decide them, when the stage opens them): vocab_size, and max_seq_len when the
        models: entry leaves it out."""
        return {}

    def check_eval(self, settings: dict, where: str, pipeline: "Plan") -> dict:
        """The family's eval block, checked by the evaluation of its task."""
        from vld.eval.variant import check_settings

        return check_settings(self.task, settings, where)

    def check_train(self, variant: "Variant", pipeline: "Plan") -> None:
        """Checks of a variant's training against its data, before any compute."""

    def curve_score(self, variant: "Variant", pipeline: "Plan"):
        """The learning curve's scoring on a small fixed held-out set (vld.train.curves), or None
        where the family has none (then train.curve_every is refused)."""
        return None

    def default_seeds(self, extras: Mapping[str, Any], pipeline: "Plan") -> tuple[int, ...] | None:
        """Seeds of a variant that names none (None: seed 0)."""
        return None

    def check_seeds(self, variant: "Variant", pipeline: "Plan") -> None:
        """Checks of a variant's seeds against what it builds on."""

    # ---- stages ------------------------------------------------------------------------
    def train_data(self, variant: "Variant") -> Path | None:
        """The token set it trains on (None: a generated stream)."""
        raise NotImplementedError

    def train_data_tag(self, variant: "Variant") -> str:
        """The name of its training token set in MLflow tags (vld.data.<name>.sha256)."""
        raise NotImplementedError

    def train_identity(self, variant: "Variant", pipeline: "Plan") -> tuple["ModelConfig", dict, dict[str, Path]]:
        """What a variant trains on, as its training stage records it: the model's config with
        the data's vocabulary, the data's identity (config.json, the resume check) and the token
        sets it reads ({tag name: directory}). Here: the token set of train_data."""
        from vld.data.tokens import TokenSet, recorded_sha256

        data_dir = self.train_data(variant)
        tokens = TokenSet.open(data_dir)
        if len(tokens.tokens) < variant.train.seq_len + 1:
            fail(f"{variant.key}.train.seq_len", f"{variant.train.seq_len} is longer than the data ({len(tokens.tokens)} tokens)")
        return (variant.model_config(tokens.vocab_size), {"data": recorded_sha256(data_dir), "dataset": str(data_dir)},
                {self.train_data_tag(variant): data_dir})

    def datamodule(self, variant: "Variant", pipeline: "Plan"):
        from vld.train.datamodules import TokenWindowDataModule

        cfg = variant.train
        return TokenWindowDataModule(self.train_data(variant), cfg.seq_len, cfg.micro_batch_size,
                                     seed=cfg.seed, num_workers=cfg.num_workers)

    def model_dir(self, variant: "Variant") -> Path:
        """Where the model of `variant` (one seed of it) lives."""
        return paths.pretrain_model_dir(self.name, variant.name, variant.seed)

    def load_model(self, variant: "Variant"):
        """The trained model of `variant` (one seed of it), on the CPU."""
        from vld.model import load_model

        return load_model(self.model_dir(variant) / "model.pt")

    def eval_settings(self, variant: "Variant") -> dict[str, Any]:
        """The `settings` argument of vld.eval.variant.evaluate_variant."""
        return dict(variant.eval)

    def eval_data(self, variant: "Variant") -> dict[str, Any]:
        """The `data` argument of vld.eval.variant.evaluate_variant."""
        raise NotImplementedError


class IgsmEvaluated(Family):
    task = "igsm"

    def check_eval(self, settings, where, pipeline):
        if "objective" in settings:
            fail(f"{where}.objective", "is set per variant (how it was trained): move it to each variant")
        tests = settings.pop("tests", None)
        available = pipeline.data["igsm"].tests
        if tests is None:
            tests = list(available)
        if not isinstance(tests, list) or not tests:
            fail(f"{where}.tests", "must be a non-empty list of test-set names")
        for test in tests:
            require_name(f"{where}.tests", test, available, "dataset", "data.igsm.tests")
        return {"tests": tests, **super().check_eval(settings, where, pipeline)}

    def check_train(self, variant, pipeline):
        # evaluation generates after each test prompt: the context must hold the longest one and a
        # token more; known once the test sets exist (every stage validates, so the first stage
        # that runs after they are written stops, before any compute)
        igsm, context = pipeline.data["igsm"], variant.model.max_seq_len
        for test in variant.eval["tests"]:
            longest = igsm.longest_prompt(test, paths.IGSM_TESTS / test)
            if longest is not None and context <= longest:
                fail(f"models.{variant.model_name}.max_seq_len", f"{context} leaves no room to answer the longest"
                     f" prompt of data.igsm.tests.{test} ({longest} tokens), which {variant.key} is evaluated on;"
                     f" give at least {longest + 1}")

    def eval_data(self, variant):
        return {"igsm_test": {name: str(paths.IGSM_TESTS / name) for name in variant.eval["tests"]},
                "igsm_train": str(paths.IGSM_TRAIN)}

    def eval_settings(self, variant):
        # the tests are the data; the objective is the variant's (how it was trained), not an eval-block key
        return {**{key: value for key, value in variant.eval.items() if key != "tests"}, "objective": variant.objective}

    def train_data(self, variant):
        return paths.IGSM_TRAIN

    def train_data_tag(self, variant):
        return "igsm_train"

    def datamodule(self, variant, pipeline):
        from vld.train.datamodules import igsm_datamodule

        cfg = variant.train
        return igsm_datamodule(variant.objective, self.train_data(variant), cfg.seq_len, cfg.micro_batch_size,
                               seed=cfg.seed, num_workers=cfg.num_workers, where=f"{variant.key}.train.seq_len")


class Reasoning(IgsmEvaluated):
    name, claim_set = "reasoning", "reasoning"
    variant_keys = ("model", "objective", "recipe")
    has_curves = True

    def check_variant(self, spec, where, pipeline):
        from vld.data.igsm.objectives import DEFAULT_OBJECTIVE, check_objective

        objective = check_objective(spec.get("objective", DEFAULT_OBJECTIVE), f"{where}.objective")
        return {**super().check_variant(spec, where, pipeline), "objective": objective}

    def curve_score(self, variant, pipeline):
        from vld.train.curves import igsm_curve_score

        # the first curve_sequences problems of each test set it is evaluated on, decoded as its
        # evaluation decodes them; test problems are never trained on
        settings = variant.eval
        return igsm_curve_score({name: paths.IGSM_TESTS / name for name in settings["tests"]},
                                variant.train.curve_sequences, variant.objective,
                                max_new_tokens=settings.get("max_new_tokens"), batch_size=settings.get("batch_size") or 32)


class OwnDataset(Family):
    """A family whose variants name a dataset under data.<data_section>."""

    data_section: str
    variant_keys = ("model", "data", "recipe")

    def check_variant(self, spec, where, pipeline):
        out = super().check_variant(spec, where, pipeline)
        name = require_name(f"{where}.data", spec.get("data"), pipeline.data.get(self.data_section, {}), "dataset",
                            f"data.{self.data_section}")
        return {**out, "data": name}


class Knowledge(OwnDataset):
    name, task, data_section, claim_set = "knowledge", "knowledge", "knowledge", "capacity"
    has_curves = True

    def train_data(self, variant):
        return paths.knowledge_dir(variant.data)

    def train_data_tag(self, variant):
        return variant.data

    def check_train(self, variant, pipeline):
        n_tokens = pipeline.data["knowledge"][variant.data].n_tokens
        if n_tokens is not None and variant.train.seq_len + 1 > n_tokens:
            fail(f"{variant.key}.train.seq_len", f"{variant.train.seq_len} + 1 tokens per window, but data.knowledge."
                 f"{variant.data} has {n_tokens} tokens")

    def datamodule(self, variant, pipeline):
        spec = pipeline.data["knowledge"][variant.data]
        if spec.kind != "biographies":
            return super().datamodule(variant, pipeline)
        from vld.train.datamodules import BiographyDataModule

        cfg = variant.train
        return BiographyDataModule(self.train_data(variant), cfg.seq_len, cfg.micro_batch_size, seed=cfg.seed,
                                   mode=spec.mode, num_workers=cfg.num_workers)

    def eval_data(self, variant):
        return {"knowledge": str(paths.knowledge_dir(variant.data))}

    def curve_score(self, variant, pipeline):
        from vld.train.curves import knowledge_curve_score

        # its evaluation's measures, with its evaluation's settings, on a fixed subset of the
        # data it memorises (what is measured is how much of the training set is stored)
        settings = variant.eval
        return knowledge_curve_score(self.train_data(variant), settings.get("seq_len") or variant.model.max_seq_len,
                                     variant.train.curve_sequences, settings.get("knowledge"))


class Retrofitted:
    """What every retrofit family shares: its variants name a trained variant of
    `source_family` (`source:`), get a reuse schedule and are fine-tuned on that family's
    training data; seed s fine-tunes the source's seed s. Mixed in before the family whose
    task, data and evaluation the source has."""

    trained_by, claim_set = "retrofit", "retrofit"
    seeds_together = False  # one fine-tuning after another
    has_curves = False  # the retrofit stage draws none
    variant_keys = ("source", "method", "lora_rank")
    source_family: str

    def check_variant(self, spec, where, pipeline):
        from vld.retrofit.methods import DEFAULT_LORA_RANK, check_method

        sources = pipeline.variants.get(self.source_family, {})
        source = require_name(f"{where}.source", spec.get("source"), sources, f"{self.source_family} variant",
                              f"{self.source_family}.variants")
        method = spec.get("method", "full")
        rank = spec.get("lora_rank", DEFAULT_LORA_RANK)
        check_method(method, rank, where)
        return {"model_name": sources[source].model_name, "source": source, "method": method, "lora_rank": rank,
                **self.inherited(sources[source])}

    def inherited(self, source: "Variant") -> dict[str, Any]:
        """The Variant fields a retrofit takes from its source: it is fine-tuned on what its
        source was trained on."""
        raise NotImplementedError

    def source_variant(self, variant: "Variant", pipeline: "Plan") -> "Variant":
        """The source of `variant`, at the same seed."""
        return pipeline.variants[self.source_family][variant.source].for_seed(variant.seed)

    def source_model(self, variant: "Variant") -> Path:
        """The checkpoint file `variant` (one seed of it) starts from (its directory also holds
        a config.json: ours, not Hugging Face's)."""
        return paths.pretrain_model_dir(self.source_family, variant.source, variant.seed) / "model.pt"

    def default_seeds(self, extras, pipeline):
        return pipeline.variants[self.source_family][extras["source"]].seeds  # seed s fine-tunes the source's seed s

    def check_seeds(self, variant, pipeline):
        source = pipeline.variants[self.source_family][variant.source]
        missing = [seed for seed in variant.seeds if seed not in source.seeds]
        if missing:
            fail(f"{variant.key}.seeds", f"seed {missing[0]} is not a seed of {self.source_family}.variants."
                 f"{variant.source} (its seeds: {list(source.seeds)}); seed s fine-tunes the source's seed s")

    def model_dir(self, variant):
        return paths.retrofit_model_dir(self.name, variant.name, variant.seed)

    def load_model(self, variant):
        from vld.retrofit.api import load_retrofit

        return load_retrofit(self.model_dir(variant))[0]


class Retrofit(Retrofitted, IgsmEvaluated):
    """The paper's Table 2: a pretrained iGSM reasoning model retrofitted."""

    name, source_family = "retrofit", "reasoning"

    def inherited(self, source):
        return {"objective": source.objective}


class KHop(OwnDataset):
    name, task, data_section, claim_set = "khop", "khop", "khop", "reasoning"
    has_curves = True

    def fixed_train(self, extras, pipeline):
        return {"seq_len": pipeline.data["khop"][extras["data"]].seq_len}

    def model_from_data(self, variant, pipeline):
        spec = pipeline.data["khop"][variant.data]
        return {"vocab_size": spec.vocab_size, "max_seq_len": spec.seq_len}  # sequences are length + 1 tokens

    def train_data(self, variant):
        return None  # a stream generated from (seed, step)

    def train_identity(self, variant, pipeline):
        from dataclasses import asdict

        # a stream: its settings are the data
        return variant.model, {"stream": variant.data, "spec": asdict(pipeline.data["khop"][variant.data])}, {}

    def datamodule(self, variant, pipeline):
        from vld.train.datamodules import KHopDataModule

        cfg = variant.train
        return KHopDataModule(pipeline.data["khop"][variant.data], cfg.global_batch_size, cfg.micro_batch_size,
                              seed=cfg.seed, num_workers=cfg.num_workers, first_step=self.first_step(variant, pipeline))

    def first_step(self, variant: "Variant", pipeline: "Plan") -> int:
        """The step of the k-hop stream its training starts at."""
        return 0

    def eval_data(self, variant):
        return {"khop_test": str(paths.khop_tests_dir(variant.data))}

    def curve_score(self, variant, pipeline):
        import dataclasses

        from vld.data.khop import test_set
        from vld.train.curves import khop_curve_score

        # the test sets' generator, curve_sequences per hop count: never trained on
        spec = dataclasses.replace(pipeline.data["khop"][variant.data], test_sequences=variant.train.curve_sequences)
        return khop_curve_score({k: test_set(spec, k) for k in spec.hop_counts})


class KHopRetrofit(Retrofitted, KHop):
    """Table 2 on k-hop: a trained k-hop model retrofitted, fine-tuned on the rest of its
    source's stream."""

    name, source_family = "khop_retrofit", "khop"

    def inherited(self, source):
        return {"data": source.data}

    def first_step(self, variant, pipeline):
        # the stream where the source stopped: fine-tuning sees sequences its source never saw
        return self.source_variant(variant, pipeline).train.max_steps



class LmRetrofit(OwnDataset):
    """A local Hugging Face Llama checkpoint with a reuse schedule, fine-tuned on chat data
    (data.sft: its tokenizer, its chat template, labels on assistant tokens) and measured with
    lm-evaluation-harness (docs/lm_retrofit.md). The checkpoint is the data's `source`."""

    name, task, data_section, claim_set = "lm_retrofit", "lm_eval", "sft", "lm_retrofit"
    trained_by = "lm_retrofit"
    fsdp = True  # a checkpoint may not fit one GPU
    seeds_together = False  # one fine-tuning after another
    variant_keys = ("data", "method", "lora_rank")

    def check_variant(self, spec, where, pipeline):
        from vld.retrofit.methods import DEFAULT_LORA_RANK, check_method
        from vld.retrofit.sources import hf_llama_config

        sets = pipeline.data.get("sft", {})
        name = require_name(f"{where}.data", spec.get("data"), sets, "dataset", "data.sft")
        data = sets[name]
        config = hf_llama_config(data.source, f"data.sft.{name}.source")
        limit = config.get("max_position_embeddings")
        if isinstance(limit, int) and data.max_tokens - 1 > limit:
            fail(f"data.sft.{name}.max_tokens", f"{data.max_tokens} tokens per conversation exceed the checkpoint's"
                 f" max_position_embeddings {limit} + 1")
        method, rank = spec.get("method", "lora"), spec.get("lora_rank", DEFAULT_LORA_RANK)
        check_method(method, rank, where)
        return {"model_name": Path(data.source).name, "data": name, "source": data.source, "method": method,
                "lora_rank": rank}

    def base_model(self, extras, pipeline):
        from vld.model.config import ModelConfig
        from vld.retrofit.sources import hf_llama_config

        where = f"data.sft.{extras['data']}.source"
        config = hf_llama_config(extras["source"], where)
        fields = {"n_layer": "num_hidden_layers", "d_model": "hidden_size", "n_head": "num_attention_heads",
                  "d_ff": "intermediate_size", "vocab_size": "vocab_size", "max_seq_len": "max_position_embeddings"}
        return ModelConfig.from_dict({"block": "llama", **{ours: config[theirs] for ours, theirs in fields.items()
                                                           if theirs in config}}, where=f"{where} (config.json)")

    def fixed_train(self, extras, pipeline):
        return {"seq_len": pipeline.data["sft"][extras["data"]].max_tokens - 1}  # one conversation per row

    def train_data(self, variant):
        return paths.sft_dir(variant.data)

    def train_data_tag(self, variant):
        return variant.data

    def datamodule(self, variant, pipeline):
        from vld.train.datamodules import SftDataModule

        cfg = variant.train
        return SftDataModule(self.train_data(variant), cfg.micro_batch_size, seed=cfg.seed,
                             num_workers=cfg.num_workers)

    def check_eval(self, settings, where, pipeline):
        from vld.eval.lm_tasks import check_settings

        return check_settings(settings, where)

    def model_dir(self, variant):
        return paths.retrofit_model_dir("lm_retrofit", variant.name, variant.seed)

    def load_model(self, variant):
        from vld.retrofit.api import load_retrofit

        return load_retrofit(self.model_dir(variant))[0]


# Validation order matters: retrofit variants name the variants of their source family.
FAMILIES: dict[str, Family] = {
    f.name: f for f in (Reasoning(), Knowledge(), Retrofit(), KHop(), KHopRetrofit(), LmRetrofit())}


def trained_by(stage: str) -> tuple[str, ...]:
    """Names of the families a training stage trains (its --family choices)."""
    return families_where(trained_by=stage)


def families_where(**attributes: str) -> tuple[str, ...]:
    """Names of the families whose entries have these values, e.g. task="knowledge": the report
    picks its results by what a family is, not by its name."""
    return tuple(name for name, family in FAMILIES.items()
                 if all(getattr(family, key) == value for key, value in attributes.items()))
