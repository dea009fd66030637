"""Settings: one TOML file plus ``STROP_*`` environment variables.

Precedence, highest first: environment (``STROP_SERVE__PORT=8400``), the TOML file
(``strop.toml`` in the working directory, or the path in ``STROP_CONFIG``), defaults.
Nested tables use ``__`` in variable names: ``[serve] port`` is ``STROP_SERVE__PORT``.
"""

from __future__ import annotations

import os
import tomllib
from functools import cache
from pathlib import Path

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from strop.errors import StropError

CONFIG_ENV = "STROP_CONFIG"
DEFAULT_CONFIG_FILE = "strop.toml"


# The widest matrix instructions a CPU may have, widest first: they set how fast serving and training run.
MATRIX_UNITS = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))


@cache  # the CPU does not change while strop runs; settings are loaded by every command and many helpers
def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, frozenset[str]]:
    """This CPU's model name and flags (empty where there is no ``/proc/cpuinfo``: not Linux)."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return "", frozenset()
    block = lines[:lines.index("")] if "" in lines else lines  # the first processor's; the others repeat it
    first = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in block)}
    return first.get("model name", ""), frozenset(first.get("flags", "").split())


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX): there bfloat16 serving and
    training are faster than float32; without them bfloat16 matrix products are emulated and far slower (and
    float32, which is right everywhere, is the default)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_info(cpuinfo)[1])


def machine(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, object]:
    """The machine a measurement ran on: the CPU's matrix unit sets the speed of serving and training, so timings
    from different CPUs are comparable only with it."""
    name, flags = cpu_info(cpuinfo)
    lacking = "none of " + ", ".join(label for _, label in MATRIX_UNITS) if flags else "unknown"
    unit = next((label for flag, label in MATRIX_UNITS if flag in flags), lacking)
    return {"cpu": name or "unknown", "cores": os.cpu_count(), "matrix_unit": unit,
            "bfloat16_in_hardware": cpu_has_bf16(cpuinfo)}


def machine_text(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """``machine()`` in a few words: 'AMD EPYC, 2 cores, AVX2 (float32)'."""
    about = machine(cpuinfo)
    return (f"{about['cpu']}, {about['cores']} cores, {about['matrix_unit']} "
            f"({'bfloat16 in hardware' if about['bfloat16_in_hardware'] else 'float32'})")


class Section(BaseModel):
    """A table of the config file; a misspelt key is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class ServeSettings(Section):
    """The embedded vLLM server that strop starts and stops itself."""

    host: str = "127.0.0.1"
    port: int = Field(8321, ge=1, le=65535)
    start_timeout_s: float = Field(300.0, gt=0, description="How long to wait for /health.")
    kv_cache_gib: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE (whole GiB).")
    max_model_len: int = Field(4096, ge=256)
    block_size: int = Field(32, ge=16, multiple_of=16, description="Tokens per KV-cache block, the prefix cache's "
                            "unit: an episode's next step re-computes at most one block of what it shares with "
                            "the last (vLLM's CPU default 128; 32 ran episodes 1.11x faster, the same answers, "
                            "bench/serve_setting.py).")
    max_lora_rank: int = Field(16, ge=1)
    max_loras: int = Field(2, ge=1)
    enforce_eager: bool = Field(True, description="Skip torch.compile: starts in seconds instead of minutes.")
    executor: str = Field("uni", pattern="^(uni|mp)$", description="Where vLLM runs the model: uni (in its engine "
                          "process, on every core) | mp (the CPU build's default: a worker process bound to all cores "
                          "but one, which the engine's scheduler spins on; 1.46x slower episodes on 2 cores, "
                          "bench/serve_setting.py).")
    dtype: str = Field("float32", pattern="^(float32|bfloat16|float16|auto)$",
                       description="Weights and activations; bfloat16 is fast only on CPUs with AVX512-BF16 or AMX.")
    extra_args: list[str] = Field(default_factory=list, description="Passed verbatim to vLLM.")
    adapter_mode: str = Field("merged", pattern="^(merged|lora)$", description="How the active adapter is served: "
                              "merged (merged into a model folder a new server serves at base-model speed, swapped in "
                              "blue/green; the CPU default) | lora (a runtime LoRA beside the base model, for GPU "
                              "servers that serve many adapters).")
    drain_timeout_s: float = Field(120.0, gt=0, description="How long a swap lets the old server finish its requests.")


class SamplingSettings(Section):
    """Default sampling for agent answers."""

    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="Penalty on tokens already generated, "
                                     "growing with their count (the prompt is not penalised, so answers may "
                                     "still copy from passages).")
    repetition_penalty: float = Field(1.0, gt=0.0, description="vLLM's multiplicative penalty on tokens seen in the "
                                      "prompt or the output (1: off).")


class MemorySettings(Section):
    """The Qdrant memory: an in-process engine in the state folder, or a Qdrant server by URL."""

    backend: str = Field("embedded", pattern="^(embedded|server)$", description="embedded | server")
    url: str | None = Field(None, description="Qdrant server or cluster URL (backend = server).")
    api_key: SecretStr | None = Field(None, description="Qdrant server API key (shown masked).")
    embedding_model: str | None = Field(None, description="sentence-transformers path; default all-MiniLM-L6-v2.")
    embed_batch_size: int = Field(64, ge=1)
    embed_threads: int = Field(1, ge=1, description="Torch threads for embedding (1 is steady beside vLLM).")
    collection: str = Field("strop", pattern=r"^[A-Za-z0-9_-]+$", description="Collection (server) / folder name.")
    chunk_chars: int = Field(1200, ge=100, description="Longest chunk in characters; shorter texts stay whole.")
    chunk_overlap: int = Field(200, ge=0, description="Characters of whole sentences repeated between chunks.")
    bm25_k: float = Field(1.2, ge=0, description="BM25 term-frequency saturation.")
    bm25_b: float = Field(0.75, ge=0, le=1, description="BM25 length normalisation.")
    bm25_avg_len: float = Field(120.0, gt=0, description="BM25 expected chunk length in tokens.")
    rrf_k: int = Field(60, ge=1, description="Reciprocal rank fusion constant for hybrid search.")
    dense_weight: float = Field(1.5, ge=0, description="Weight of the dense ranking in hybrid fusion.")
    sparse_weight: float = Field(1.0, ge=0, description="Weight of the sparse (BM25) ranking in hybrid fusion.")
    hnsw_ef: int = Field(128, ge=1, description="HNSW search breadth (higher: better recall, slower).")


class AgentSettings(Section):
    """How agents act: every action is one schema-constrained JSON object."""

    max_steps: int = Field(6, ge=1, description="Actions before the agent must stop (step budget).")
    action_max_tokens: int = Field(256, ge=16, description="Most tokens one action may take.")
    min_tool_steps: int = Field(1, ge=0, description="Tool actions required before final_answer is allowed.")
    namespace: str = Field("default", description="Memory namespace for search_memory and remember.")
    memory_k: int = Field(3, ge=1, description="Passages search_memory returns.")
    search_min_score: float = Field(0.35, ge=-1.0, le=1.0, description="A question whose closest memory passage "
                                    "is at least this similar (cosine) is searched before anything else (1: never).")
    memory_answer: str = Field("grounded", pattern="^(grounded|spans|agent)$", description="How the answer after a "
                               "memory search is made: grounded (one plain call over the passages), spans (an answer "
                               "constrained to spans of the passages), agent (the agent's own next actions).")
    exemplars: bool = Field(True, description="Show the few-shot exemplars from agents/prompts/exemplars.yaml.")
    learned_exemplars: int = Field(0, ge=0, le=8, description="Exemplars of past successful runs shown beside the "
                                   "file ones, nearest the question (0: off; `strop trajectories learn` stores them).")
    exemplar_namespace: str = Field("exemplars", description="Memory namespace of the learned exemplars.")


class CriticSettings(Section):
    """The LLM judge used by scenario rubrics and the self-feedback critic."""

    llm_url: str | None = Field(None, description="A judge's OpenAI-compatible server; default: the agent's "
                                "server, base model without adapter.")
    llm_api_key: SecretStr = Field(SecretStr("EMPTY"), description="API key of critic.llm_url (shown masked).")
    llm_model: str | None = Field(None, description="Model name on llm_url; default: the first it lists.")
    max_tokens: int = Field(320, ge=16, description="Most tokens of one verdict (reasoning included).")
    tie_margin: float = Field(0.1, ge=0.0, le=0.5, description="A pairwise preference within this distance of "
                              "0.5 counts as a tie.")
    judge_weight: float = Field(0.0, ge=0.0, le=1.0, description="How far the pairwise judge moves an episode's "
                                "score in the improvement critic (0: off); it only separates episodes the verifiable "
                                "checks leave tied. The embedded 135M judge agrees with people at chance: use it "
                                "with a stronger model at llm_url.")
    use_gold: bool = Field(True, description="Score suite prompts with their graders (gold answers); false: "
                           "the label-free critic (self-consistency and grounding) scores every prompt.")
    min_vote_share: float = Field(0.5, ge=0.0, le=1.0, description="Self-consistency: the share of a prompt's "
                                  "episodes the most-voted answer needs (and more votes than any other) to be "
                                  "preferred; below it the prompt gives no pair.")
    grounding_overlap: float = Field(0.75, ge=0.0, le=1.0, description="Memory questions voting by answer: the "
                                     "share of an answer's new content words one passage of the episode's own "
                                     "search must hold for its vote to count.")
    memory_vote: str = Field("relevance", pattern="^(relevance|answer|passage)$", description="Label-free "
                             "scoring of memory questions: relevance (no vote: episodes whose searches found a "
                             "passage holding clearly more of the question's words are preferred; on 449 unseen "
                             "questions 91% pair accuracy at 48% coverage) | answer (an episode votes for its answer, "
                             "when a passage its own search returned holds it; 88% at 30%) | passage (an answered "
                             "episode votes for the passage its last search ranked first; 80% at 61%).")
    call_vote: str = Field("function", pattern="^(function|call)$", description="Self-consistency on prompts "
                           "that declare functions: function (an episode votes for the declared function it called "
                           "last, whatever its arguments) | call (for that call, name and arguments; calls rarely "
                           "agree exactly: measured, a sixth of the pairs and label-free rounds that learned less).")
    judge_mode: str = Field("group", pattern="^(group|pairwise|reward)$", description="How the judge breaks ties: "
                            "group (it sees the tied episodes of a prompt together with a checklist derived from the "
                            "question and picks the best, in judge_orders shuffled orders) | pairwise (both orders "
                            "of every tied pair) | reward (every tied pair by the reward model that `strop critic "
                            "train-reward` trained on people's labels).")
    judge_orders: int = Field(2, ge=1, le=9, description="Orders a group is shown in (rotations of a shuffle).")


class TrainSettings(Section):
    """Preference training (TRL DPOTrainer + LoRA); defaults finish in minutes for the 135M model on a CPU."""

    method: str = Field("dpo", validation_alias=AliasChoices("method", "loss"),  # `loss`: its former name
                        pattern=r"^(dpo|ipo|sft|sft\+dpo|sft\+ipo)$", description="dpo (sigmoid) | ipo: "
                        "preference training on the pairs; sft: supervised fine-tuning on their chosen actions only; "
                        "sft+dpo | sft+ipo: SFT first (sft_epochs passes) as a warm start, then the preference loss "
                        "on the same adapter.")
    sft_epochs: float = Field(1.0, gt=0, description="Passes over the chosen actions of an SFT stage.")
    rpo_alpha: float = Field(1.0, ge=0, description="Weight of an NLL term on the chosen action beside the "
                             "preference loss (RPO, TRL's loss_type sft); 0: off (plain DPO lost 6 arithmetic cases "
                             "of 53 held out on a demo round's pairs where RPO lost none).")
    beta: float = Field(0.1, gt=0)
    learning_rate: float = Field(2e-4, gt=0)
    epochs: float = Field(2.0, gt=0, description="Passes over the pairs: one pass of a round's tens of pairs barely "
                          "moves the adapter; 2 trained an efficacy round's 121 pairs in 5.8 minutes against 7.9 for "
                          "3, and its candidate did as well (gate 15 won / 4 lost, test 4 / 3; 3 passes: 10 / 5, "
                          "4 / 3; bench/results/ablate-efficacy-round-speed.json).")
    min_updates: int = Field(0, ge=0, description="At least this many optimizer updates, by more passes over a "
                             "small round's pairs; 0 (the default): `epochs` passes whatever the count. 56 (a first "
                             "round's count) on three later rounds' 17 to 42 pairs overfit: rag lost 4 to 7 gate "
                             "cases each (README, More updates).")
    batch_size: int = Field(1, ge=1, description="Pairs per step; memory grows with it (full-vocabulary logits).")
    gradient_accumulation: int = Field(4, ge=1, description="Steps per optimizer update (effective batch).")
    max_length: int = Field(512, ge=64, description="Tokens of context + action; a longer context loses its "
                            "oldest few-shot exemplars first (the question, its history and the nearest exemplar "
                            "stay); a pair that still does not fit is left out.")
    lora_r: int = Field(16, ge=1, description="LoRA rank (at most serve.max_lora_rank).")
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                               "up_proj", "down_proj"])
    lora_layers: int | None = Field(None, ge=1, description="LoRA on the top this many decoder layers only: the "
                                    "backward pass stops below the lowest (faster training); None: every layer.")
    held_out: float = Field(0.1, ge=0, lt=1, description="Share of pairs kept out of training for evaluation.")
    min_pairs: int = Field(8, ge=1, description="Fewer pairs than this: no training, nothing promoted.")
    threads: int = Field(2, ge=1, description="Torch threads while training (the round's other stages wait).")
    shared_context: bool = Field(True, description="Encode the tokens a batch's pairs (or SFT's demonstrations) "
                                 "share (system prompt, exemplars, each pair's prompt) once, in one packed token "
                                 "tree; the same log-probabilities as separate sequences.")
    precompute_ref: bool = Field(True, description="Compute the reference log-probabilities once before training "
                                 "instead of in every step of every epoch.")
    ref_batch_size: int = Field(8, ge=1, description="Pairs per reference forward pass before training.")
    group_context: bool = Field(True, description="With shared_context: the pairs (or demonstrations) of one "
                                "optimizer update (batch_size x gradient_accumulation) are one packed step, the "
                                "same update, and those that share a context are drawn into the same update, so "
                                "the tree encodes their system prompt and exemplars once.")
    bf16: bool = Field(default_factory=lambda: cpu_has_bf16(),  # looked up when read, so a test can set it
                       description="Matrix products in bfloat16 (autocast): 1.8x the pairs per second on a CPU with "
                       "AMX, 1.6x with AVX512-BF16 alone (the default on both; bench/dpo.py), slower on one without; "
                       "log-probabilities are then float32's only to about 0.1 per token.")
    seed: int = 0


class ImproveSettings(Section):
    """One self-improvement round: rollouts -> critic -> pairs -> train -> gate -> promote."""

    suites: list[str] = Field(default_factory=lambda: ["arithmetic", "tools", "rag", "word_problems"],
                              description="Suites whose train split gives prompts and whose gate split gates.")
    prompts_per_suite: int = Field(48, ge=0, description="Informative train-split cases wanted per suite each round "
                                   "(whose episodes differ by min_margin or more, so they make a pair).")
    draw_factor: float = Field(2.0, ge=1, description="Most train cases per suite a round rolls out, as a multiple "
                               "of prompts_per_suite: it draws more while fewer than prompts_per_suite are "
                               "informative and the share found so far says more can be found (1: draw once).")
    skip_solved: bool = Field(False, description="Suites whose gate cases the current policy all passes draw no "
                              "prompts (the gate's current side runs first, before the rollouts, to say which): a "
                              "round cannot gain there, and the gate still refuses a candidate worse on them. "
                              "Off: the embedded model's arithmetic pairs (a suite it has solved) carried a round's "
                              "rag gains (with them, 14 won / 1 lost against without on the test split over three "
                              "seeds; bench/results/ablate-train-seeds.json), and skipping them saved 1-2 minutes.")
    chat_prompts: int = Field(16, ge=0, description="Recent chat prompts (no scenario) per round.")
    synthetic_prompts: int = Field(8, ge=0, description="Questions written from memory documents per round.")
    samples: int = Field(4, ge=2, description="Episodes per prompt (K). 3 took 0.67x the time and did as well "
                         "head to head on three first rounds' prompts (gate 14 won / 15 lost), but its rounds from the "
                         "base model promoted 3 of 5 against 15 of 15 with 4 (fewer pairs); 8 learned less "
                         "(bench/results/ablate-samples3-*.json, efficacy-*samples-3*.json).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of rollouts.")
    concurrency: int = Field(16, ge=1, description="Episodes in flight in rollouts and the gate: 16 decoded 1.35x "
                             "the generated tokens/s of 8 in rollouts (bench/rollouts.py).")
    rollout_dtype: str = Field(default_factory=lambda: "bfloat16" if cpu_has_bf16() else "serve",
                               pattern="^(serve|float32|bfloat16|float16)$", description="Rollouts sample from a "
                               "copy of the current policy served beside in this dtype without runtime LoRA (merged "
                               "mode), stopped after them; serve: from the serving server itself. Default: bfloat16 "
                               "where the CPU multiplies it in hardware (1.41x the generated tokens per second "
                               "with AMX, 1.34x with AVX512-BF16 alone; bench/rollouts.py), else serve. Chats and the "
                               "gate keep serve.dtype.")
    min_margin: float = Field(0.5, gt=0, le=1, description="Score gap between chosen and rejected.")
    pass_over_fail: bool = Field(False, description="An episode the case's graders passed against one they "
                                 "failed is a pair whatever the gap (a right call against a near miss with most "
                                 "arguments right); without gold answers only min_margin counts. Rounds after a "
                                 "promotion made 2.5x the pairs with it, and their candidates gained no more gate or "
                                 "test cases (bench/results/ablate-pass-over-fail-*.json).")
    queries_by_retrieval: bool = Field(False, description="A pair between two memory-search queries only where the "
                                       "better episode's search returned an answer the graders accept and the worse "
                                       "one's did not (needs gold answers). A third of a first round's rag pairs are "
                                       "two queries that both found one; without them three first rounds' candidates "
                                       "did no better (against each round's own: gate 6 / 9, test 9 / 9; "
                                       "bench/results/ablate-queries-by-retrieval-*.json).")
    answer_samples: int = Field(0, ge=0, description="Ask the answer call of each memory question (a plain call over "
                                "the passages found; greedy, so it never makes a pair of its own) again this many "
                                "times at the rollout temperature, and pair a passing reply with a failing one to "
                                "the same passages, one pair per prompt (gold-graded prompts only); 0: off. With "
                                "4, three first and three second rounds did no better than their own (gate 10 / 13 "
                                "and 6 / 9, test 10 / 10 and 10 / 7; bench/results/ablate-answer-samples-*.json).")
    demonstrations: int = Field(8, ge=0, le=100, description="Worked problems a template each round adds from the "
                                "generator of each suite that names one (word problems: GSM-Symbolic's 85 templates), "
                                "new ones every round, as pairs: the one calculator call its steps make, then "
                                "final_answer (gold: none with critic.use_gold = false); 0: off. The base model solves "
                                "no word problem, so no episode of its own can teach one. A first round with 8 was "
                                "promoted (gate word problems 8 / 0 of 33, pooled 24 / 6) and solved 73 of the 250 "
                                "shared word problems, none before; the round took 40 minutes on a 2-core CPU, "
                                "about 10 without them (bench/results/efficacy-demonstrations-8.json).")
    pairs_per_prompt: int | None = Field(None, ge=1, description="Most pairs a prompt's episodes make: its best "
                                         "episode against the worst-scored ones first; None: against every clearly "
                                         "worse one. 1 trains 1.6-1.8x faster, and its rounds won fewer "
                                         "gate cases (8-15 for five candidates at the efficacy size, 13-17 in six "
                                         "rounds with every pair; bench/results/ablate-pairs-per-prompt.json).")
    min_gain: float = Field(0.02, ge=0, description="Pooled gate pass-rate gain needed to promote (besides a "
                            "significant one, see alpha).")
    alpha: float = Field(0.05, gt=0, lt=1, description="Significance level of the gate's exact one-sided tests "
                         "(McNemar on the cases that changed): the pooled gain must have p below it, and a suite "
                         "whose test says worse at this level refuses the candidate.")
    max_drop: float = Field(0.05, ge=0, description="Largest pass-rate drop on any gate suite that is noise.")
    gate_retries: int = Field(1, ge=0, description="Times the gate runs again the episodes that errored or timed "
                              "out; any left after that and the round gives no verdict.")
    gate_limit: int | None = Field(None, ge=1, description="At most this many gate cases per suite.")
    gate_ngram: int = Field(4, ge=0, le=16, description="Merged mode: both gate sides are asked on servers started "
                            "beside the serving one, with vLLM's n-gram speculative decoding proposing this many "
                            "tokens a step (exact for the gate's greedy answers; bench/serve_setting.py); 0: no "
                            "speculation, the current side on the serving server.")


class WatchSettings(Section):
    """Unattended rounds (`strop improve --watch` or `--once`): when they start, how they share the CPU, and the
    checks that undo a promotion that turns out badly in use."""

    new_runs: int = Field(50, ge=0, description="Chat and ask runs since the last round that start one (0: off).")
    new_feedback_pairs: int = Field(5, ge=0, description="Human feedback pairs since the last round that start "
                                    "one (0: off).")
    interval_s: float = Field(0.0, ge=0, description="Start a round at least this often in seconds, new experience "
                              "or not (0: off).")
    min_gap_s: float = Field(3600.0, ge=0, description="Least time between the starts of two rounds, in seconds.")
    poll_s: float = Field(60.0, gt=0, description="How often --watch looks at the triggers and live signals.")
    policy: str = Field("nice", pattern="^(nice|idle|full)$", description="How rounds share the CPU with serving: "
                        "nice (lowest priority, train_threads for training), idle (as nice, and a round starts or "
                        "goes on to its next stage only after idle_s without chats and below max_load), full "
                        "(normal priority, train.threads).")
    niceness: int = Field(19, ge=0, le=19, description="Process niceness of rounds under policy nice or idle.")
    train_threads: int = Field(1, ge=1, description="Torch threads for training under policy nice or idle: the "
                               "other cores stay with serving.")
    idle_s: float = Field(300.0, ge=0, description="policy idle: seconds without a chat or ask run that count as "
                          "idle.")
    max_load: float = Field(1.0, gt=0, description="policy idle: highest 1-minute load average per core that counts "
                            "as idle.")
    smoke_suite: str | None = Field("smoke", description="Suite run with the new and the previous adapter right after "
                                    "a promotion; a drop beyond smoke_max_drop rolls back. None: no check.")
    smoke_max_drop: float = Field(0.15, ge=0, le=1, description="Largest smoke pass-rate drop that is kept.")
    live_min_runs: int = Field(10, ge=1, description="Chat runs with a new adapter before its live signals are "
                               "compared with the previous adapter's.")
    live_window: int = Field(50, ge=1, description="Runs compared per adapter; a new adapter that stays within "
                             "live_max_increase over this many is confirmed and no longer watched.")
    live_max_increase: float = Field(0.1, ge=0, le=1, description="Roll back when a live failure rate (runs with a "
                                     "failed tool call, exhausted budget, errors, -1 feedback) rises by more.")


class RetentionSettings(Section):
    """Bounded disk use; what a kept adapter was trained from (its round, pairs, trajectories) is never removed."""

    keep_adapters: int = Field(5, ge=1, description="Newest adapters kept (the active one and its rollback target "
                               "always are); others lose their weights, their metadata is archived.")
    keep_rounds: int = Field(10, ge=1, description="Newest rounds whose data files (prompts, rollouts, scores, "
                             "pairs) are kept besides those of kept adapters; older rounds keep their reports.")
    trajectory_days: float = Field(30.0, gt=0, description="Trajectories older than this are pruned (unless a kept "
                                   "round points to them).")
    max_trajectories: int = Field(100_000, ge=1, description="Most trajectories kept; the oldest go first.")
    prune: str = Field("archive", pattern="^(archive|delete)$", description="archive: pruned trajectories are "
                       "written to <state_dir>/archive/*.jsonl.gz first; delete: they are dropped.")


class Settings(BaseSettings):
    """Everything strop reads from configuration."""

    model_config = SettingsConfigDict(env_prefix="STROP_", env_nested_delimiter="__", extra="forbid")

    state_dir: Path = Field(Path(".strop"), description="Models, logs, memory, trajectories, adapters.")
    models_dir: Path | None = Field(None, description="Converted models; default <state_dir>/models.")
    llm_url: str | None = Field(
        None, description="An existing OpenAI-compatible server (e.g. a GPU vLLM); nothing is started."
    )
    llm_api_key: SecretStr = Field(SecretStr("EMPTY"), description="API key of llm_url (shown masked).")
    llm_model: str | None = Field(None, description="Model name on llm_url; default: the first it lists.")
    request_timeout_s: float = Field(120.0, gt=0)
    data_dir: Path = Field(Path("../shared/data"), description="External evaluation data (SQuAD, arithmetic, "
                           "GSM-Symbolic, BFCL, preference pairs) that built-in suites name as {data}/...; a "
                           "relative path is taken from the working directory.")
    prompts_dir: Path | None = Field(None, description="A folder of prompt files that replace built-in ones by "
                                     "name (agents/prompts, scenarios/prompts, training/prompts).")
    serve: ServeSettings = Field(default_factory=ServeSettings)
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    critic: CriticSettings = Field(default_factory=CriticSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    improve: ImproveSettings = Field(default_factory=ImproveSettings)
    watch: WatchSettings = Field(default_factory=WatchSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=config_path()))

    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir or self.state_dir / "models"

    @property
    def serve_dir(self) -> Path:
        return self.state_dir / "serve"

    @property
    def trajectories_path(self) -> Path:
        return self.state_dir / "trajectories.sqlite"

    @property
    def threads_path(self) -> Path:
        return self.state_dir / "threads.sqlite"

    @property
    def memory_dir(self) -> Path:
        return self.state_dir / "memory"

    @property
    def eval_dir(self) -> Path:
        return self.state_dir / "eval"

    @property
    def adapters_dir(self) -> Path:
        return self.state_dir / "adapters"

    @property
    def improve_dir(self) -> Path:
        return self.state_dir / "improve"

    @property
    def feedback_dir(self) -> Path:
        return self.state_dir / "feedback"


def config_path() -> Path:
    """The TOML file in force: ``$STROP_CONFIG`` or ``./strop.toml`` (which may not exist)."""
    return Path(os.environ.get(CONFIG_ENV, DEFAULT_CONFIG_FILE))


def load_settings(**overrides) -> Settings:
    """Read settings, turning a bad file or variable into a StropError that names the field."""
    path = config_path()
    if CONFIG_ENV in os.environ and not path.is_file():
        raise StropError(f"Config file {path} (from ${CONFIG_ENV}) does not exist.",
                         fix=f"Create it, or unset {CONFIG_ENV} to use ./{DEFAULT_CONFIG_FILE}.")
    try:
        return Settings(**overrides)
    except tomllib.TOMLDecodeError as exc:
        raise StropError(f"Config file {path} is not valid TOML: {exc}.", fix="Correct the file.") from exc
    except ValidationError as exc:
        raise StropError(f"Invalid configuration ({path} or STROP_* variables):\n{_describe(exc)}",
                         fix="Correct the named fields; `strop config` shows what is in force.") from exc


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        env = "STROP_" + "__".join(str(p) for p in err["loc"]).upper()
        lines.append(f"  {field} (env {env}): {err['msg']}; got {err.get('input')!r}")
    return "\n".join(lines)
