"""Greedy decoding with continuous batching: a fixed number of slots kept busy, KV-cached, rows stopping alone
(or sampled decoding, each row drawing from its own seeded generator: `Sampling`).

When a row finishes (EOS, a completed `#### N` line, or one of its stop strings) it leaves the batch and
its KV cache at once, and once a quarter of the slots are free the next waiting prompts are prefilled
and join the running batch: the batch never waits for its longest row. Rows are left-padded inside one
shared cache; positions are passed explicitly, so padding changes nothing a row computes. The cache is
written in place (spare room, no per-step copy); a few-shot context shared by the prompts is prefilled
once; on CPU the linear layers run on oneDNN-packed weights (`packed.py`).

Hand-written rather than transformers' `generate_batch` (paged attention): that manager runs its own
thread and scheduler, stops only on EOS / token ids (not on text such as a finished `#### N` line or
lm-eval's `Question:`), and was not faster on CPU here; see the README and benchmarks/eval_throughput.py.

Run as: tunelab eval runs/smoke --limit 200
"""

from __future__ import annotations

import re
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from tunelab.evaluate.packed import packed_linears
from tunelab.progress import bar

ANSWER_LINE = re.compile(r"####[^\n]*\d[^\n]*\n")  # a complete line after the final-answer marker
FIRST_LINE = re.compile(r"\S[^\n]*\n")  # a complete non-blank line: a short answer is given (stop rule "line")
CPU_SLOTS = 48  # rows decoded together on CPU: 32, 48, 64 and 96 measured within noise (52-58 s, 128 questions)
REFILL_SHARE = 4  # admit waiting prompts once 1/4 of the slots are free (a prefill per finished row costs more)
PREFILL_ROWS = 16  # prompts prefilled together, one chunk per decode step (8: slower; all at once: 25-35 % slower)
# Prompt-lookup drafts (greedy-exact): once few rows are left (the long answers that repeat themselves), each row
# proposes the SPEC_TOKENS tokens that followed the last earlier occurrence of its final SPEC_NGRAM tokens; one
# forward checks them all and keeps the prefix greedy decoding would have produced. Measured on 128 GSM8K questions
# (CPU): 304 -> 269 decode steps, 66 % of drafted tokens kept, 6-7 % less time; with 16 rows drafting, 256 steps
# but 13-25 % more time (every row pays for the draft positions); 256 steps is the floor: the longest answer that
# does not repeat itself.
SPEC_ROWS = 8
SPEC_TOKENS = 6
SPEC_NGRAM = 3
NUCLEUS = 256  # sampled decoding looks for the top-p nucleus among this many most likely tokens first
SHARED_MIN_TOKENS = 16  # a shorter shared prefix is prefilled with each prompt (not worth a separate forward)
ROOM = 32  # spare cache positions added when a layer's buffer is full (one copy per ROOM steps instead of every step)


@dataclass(frozen=True)
class Sampling:
    """Sampled decoding: temperature, nucleus (top-p) and the seed each row's generator starts from, with its
    prompt's number: a row draws the same tokens whatever rows it is batched with (up to the rounding of differently
    padded batches). `numbers`: each prompt's number in
    the whole pass when only some of its prompts are asked (a resumed pass, one rank's share); None = its position."""
    temperature: float
    top_p: float = 1.0
    seed: int = 0
    numbers: tuple[int, ...] | None = None

    def generator(self, index: int, device) -> torch.Generator:
        g = torch.Generator(device=device)
        g.manual_seed(self.seed * 1_000_003 + (self.numbers[index] if self.numbers is not None else index))
        return g

    def draw(self, logits: torch.Tensor, rngs: list[torch.Generator]) -> torch.Tensor:
        """Each row's next token from the batch's logits (B, V): softmax at the temperature, cut to the smallest
        set of most likely tokens whose probability reaches top_p (the first always kept), one uniform number from
        the row's generator picking a token by the kept probabilities' running sum. The nucleus is looked for among
        the NUCLEUS most likely tokens first, and among all when they do not reach top_p: the nucleus a full sort
        finds, without sorting the whole vocabulary of every row (223 ms a step for 48 rows: benchmarks/README.md)."""
        probs = torch.softmax(logits.float() / self.temperature, -1)
        ordered, order = probs.topk(min(NUCLEUS, probs.shape[-1]), -1)
        if self.top_p >= 1 or (ordered.sum(-1) < self.top_p).any():
            ordered, order = probs.sort(-1, descending=True)
        ordered = ordered * (ordered.cumsum(-1) - ordered < self.top_p)
        running = ordered.cumsum(-1)
        u = torch.cat([torch.rand(1, generator=g, device=g.device) for g in rngs]).to(running.device)
        picked = torch.searchsorted(running, (u * running[:, -1]).unsqueeze(1), right=True).clamp(
            max=running.shape[-1] - 1)
        return order.gather(1, picked).squeeze(1)


@dataclass
class Generation:
    completion: str
    tokens: int  # generated tokens up to and including the stop


@dataclass(frozen=True)
class AfterThinking:
    """A stop rule read only after a reasoning model's end-of-thinking marker (`eval.think_end`): until the reply
    holds `end`, only the EOS and the token budget end it; then `rule` applies to the text after its last occurrence."""
    end: str
    rule: list[str] | str | re.Pattern | None


@dataclass
class _Row:
    index: int  # the prompt's position in the caller's list
    position: int  # position id of the last token fed to the model
    tokens: list[int] = field(default_factory=list)  # generated so far
    rng: torch.Generator | None = None  # sampled decoding: the row's own generator


class _Batch:
    """The running rows and their shared, left-padded KV cache. (B, T) mask; cache layers (B, H, T, D)."""

    def __init__(self, cache, mask: torch.Tensor, nxt: torch.Tensor, rows: list[_Row],
                 sampling: Sampling | None = None):
        self.cache, self.mask, self.nxt, self.rows = cache, mask, nxt, rows
        self.sampling = sampling  # how each next token is picked: the most likely (None) or drawn
        self.accepted: list[list[int]] = [[] for _ in rows]  # per row: verified draft tokens that precede nxt

    def new_tokens(self) -> list[list[int]]:
        """Per row, the tokens the last step produced, in order (verified drafts, then the greedy next token)."""
        return [extra + [token] for extra, token in zip(self.accepted, self.nxt.tolist())]

    def can_take(self, width: int, max_new_tokens: int) -> bool:
        """Whether rows of `width` prompt tokens can join: a sliding-window layer crops its cache once it holds
        `sliding_window - 1` tokens, after which left-padding would misalign it; such a batch is left to drain."""
        windows = [layer.sliding_window for layer in _layers(self.cache) if getattr(layer, "is_sliding", False)]
        return not windows or max(width, self.mask.shape[1]) + max_new_tokens < min(windows) - 1

    def merge(self, other: "_Batch") -> "_Batch":
        """One batch of both: the shorter cache is left-padded to the longer one's width."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(_layers(self.cache), _layers(other.cache)):
            mine.keys = torch.cat([_pad_left(mine.keys, width, 2), _pad_left(theirs.keys, width, 2)])
            mine.values = torch.cat([_pad_left(mine.values, width, 2), _pad_left(theirs.values, width, 2)])
        self.mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(other.mask, width, 1)])
        self.nxt = torch.cat([self.nxt, other.nxt])
        self.rows, self.accepted = self.rows + other.rows, self.accepted + other.accepted
        _sync_lengths(self.cache)
        return self

    def keep(self, keep: list[int]) -> "_Batch | None":
        """Only the rows at `keep` (positions in the batch); the columns no kept row uses are cut off."""
        if not keep:
            return None
        if len(keep) < len(self.rows):
            index = torch.tensor(keep, device=self.mask.device)
            self.cache.batch_select_indices(index)
            self.mask, self.nxt = self.mask[index], self.nxt[index]
            self.rows, self.accepted = [self.rows[j] for j in keep], [self.accepted[j] for j in keep]
            used = self.mask.any(0).nonzero()
            start = int(used[0]) if len(used) else 0
            if start > 0 and all(isinstance(layer, _RoomyLayer) for layer in _layers(self.cache)):
                for layer in _layers(self.cache):
                    layer.drop_left(start)
                self.mask = self.mask[:, start:]
        return self

    def step(self, model, drafts: list[list[int]] | None = None) -> None:
        """Feed every row its last token (and its draft tokens); `nxt` becomes each row's greedy next token (or, for
        a sampled batch without drafts, the one it draws).

        With drafts, position i of a row's block predicts what follows its draft token i-1: the longest prefix of
        the draft that matches those predictions is accepted (what one-token steps would have produced), the
        next prediction becomes `nxt`, and the rejected positions are masked out of the cache for good.
        """
        k = max((len(d) for d in drafts), default=0) if drafts else 0
        device = self.mask.device
        block = self.nxt[:, None]
        if k:
            padded = [d + [0] * (k - len(d)) for d in drafts]
            block = torch.cat([block, torch.tensor(padded, dtype=block.dtype, device=device)], dim=1)  # (B, 1+k)
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1]).expand(-1, 1 + k)], dim=1)
        positions = torch.tensor([[r.position + 1 + i for i in range(1 + k)] for r in self.rows], device=device)
        out = model(input_ids=block, attention_mask=self.mask, position_ids=positions,
                    past_key_values=self.cache, use_cache=True)
        if not k:
            self.nxt, self.accepted = _next(out.logits[:, -1], self.rows, self.sampling), [[] for _ in self.rows]
            for r in self.rows:
                r.position += 1
            return
        guesses = out.logits.argmax(-1).tolist()  # (B, 1+k)
        nxt, self.accepted = [], []
        for j, (row, draft) in enumerate(zip(self.rows, drafts)):
            a = 0
            while a < len(draft) and draft[a] == guesses[j][a]:
                a += 1
            self.accepted.append(draft[:a])
            nxt.append(guesses[j][a])
            row.position += 1 + a
            if a < k:
                self.mask[j, self.mask.shape[1] - (k - a):] = 0  # the rejected draft positions
        self.nxt = torch.tensor(nxt, dtype=self.nxt.dtype, device=device)

    def speculates(self) -> bool:
        """Few rows left and no sliding-window layer (whose cache must stay contiguous)."""
        return len(self.rows) <= SPEC_ROWS and not any(getattr(layer, "is_sliding", False)
                                                       for layer in _layers(self.cache))


class _RoomyLayer(DynamicLayer):
    """A full-attention cache layer whose keys and values sit in buffers with spare room along T: a decode step
    writes its tokens in place. transformers' `DynamicLayer` concatenates, copying the whole cache every step
    (37 % of a profiled 16-row SmolLM2 step over 250 cached tokens with packed matmuls; ~2 % of the 128-question
    benchmark, whose caches are shorter; more on a large GPU cache).

    `keys` / `values` read as (B, H, T, D) views of the buffers; assigning them stores the tensor as is (no room:
    the next update makes some).
    """

    def __init__(self):
        self._keys = self._values = None  # (B, H, capacity, D)
        self._length = 0
        super().__init__()

    @property
    def keys(self):
        return None if self._keys is None else self._keys[:, :, :self._length]

    @keys.setter
    def keys(self, t):
        self._keys, self._length = t, 0 if t is None else t.shape[-2]

    @property
    def values(self):
        return None if self._values is None else self._values[:, :, :self._length]

    @values.setter
    def values(self, t):
        self._values = t

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device, self.is_initialized = key_states.dtype, key_states.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized or self._keys is None:  # the prefill: kept as computed
            self.lazy_initialization(key_states, value_states)
            self.keys, self.values = key_states, value_states
            return self.keys, self.values
        n, end = key_states.shape[-2], self._length + key_states.shape[-2]
        if end > self._keys.shape[-2]:
            self._keys, self._values = _with_room(self.keys, n + ROOM), _with_room(self.values, n + ROOM)
        self._keys[:, :, self._length:end] = key_states
        self._values[:, :, self._length:end] = value_states
        self._length = end
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._keys is not None:  # the room travels with the rows
            self._keys, self._values = self._keys[indices], self._values[indices]

    def drop_left(self, start: int) -> None:
        """Forget the first `start` positions (columns no remaining row uses); the room on the right stays."""
        self._keys, self._values = self._keys[:, :, start:], self._values[:, :, start:]
        self._length -= start


def _with_room(t: torch.Tensor, room: int) -> torch.Tensor:
    """A contiguous copy of `t` (B, H, T, D) with `room` unused positions after its T."""
    out = t.new_empty(t.shape[0], t.shape[1], t.shape[2] + room, t.shape[3])
    out[:, :, :t.shape[2]] = t
    return out


def draft(context: list[int], k: int = SPEC_TOKENS, n: int = SPEC_NGRAM) -> list[int]:
    """Up to `k` tokens that followed the most recent earlier occurrence of `context`'s last `n` tokens."""
    if len(context) <= n:
        return []
    tail = context[-n:]
    for start in range(len(context) - n - 1, -1, -1):
        if context[start:start + n] == tail:
            return context[start + n:start + n + k]
    return []


def auto_slots(model, device: torch.device, max_tokens: int) -> int:
    """Rows decoded together: CPU_SLOTS on CPU; on CUDA as many as half the free memory holds KV caches of
    `max_tokens` (prompt + new tokens, plus the spare room) for, between 8 and 256."""
    if device.type != "cuda":
        return CPU_SLOTS
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    per_token = 2 * cfg.num_hidden_layers * heads * head_dim * next(model.parameters()).element_size()
    free, _ = torch.cuda.mem_get_info(device)
    return max(8, min(256, int(0.5 * free / (per_token * (max_tokens + ROOM)))))


@torch.no_grad()
def generate(model, tok, prompts: list[str], max_new_tokens: int, slots: int = 0, label: str = "generate",
             on_result=None, stops: list | None = None,
             speculate: bool = True, pack: bool = True, prefix: str | None = None,
             sampling: Sampling | None = None, share: bool = True) -> tuple[list[Generation], float]:
    """Greedy (or, with `sampling`, sampled) completions for `prompts` (same order) and the seconds spent.

    Args:
        slots: rows decoded together; 0 = automatic (`auto_slots`).
        on_result: called with (prompt index, Generation) as each row finishes (running accuracy, journals).
        stops: per prompt, None (after a finished `#### N` line), "line" (after the first non-blank line), a pattern
            (after the line holding its first match), or stop strings (lm-eval's `until`: ends before the first);
            any of them read only after a reasoning model's thinking (`AfterThinking`).
        speculate: prompt-lookup drafts once at most SPEC_ROWS rows run (same tokens; greedy decoding only).
        pack: on CPU, run the linear layers on oneDNN-packed weights (`packed.py`; same products, faster).
        prefix: text the prompts start with (few-shot shots): prefilled once, its KV cache shared (`SharedPrefix`);
            None: the tokens every prompt starts with (a chat template's system turn, a tool-calling run's schemas),
            shared the same way when there are enough of them (and `share`; False prefills every prompt whole).
        sampling: draw each token (`Sampling`: temperature, top-p, each row's own seeded generator).
    """
    device = next(model.parameters()).device
    model.eval()
    encoded = tok(prompts, add_special_tokens=True)["input_ids"]
    if not encoded:
        return [], 0.0
    stops = stops or [None] * len(prompts)
    slots = slots or auto_slots(model, device, max(len(x) for x in encoded) + max_new_tokens)
    waiting = deque(sorted(range(len(prompts)), key=lambda i: -len(encoded[i])))  # similar lengths enter together
    eos = _eos_ids(model, tok)
    shared = SharedPrefix.run(model, tok, prefix, device) if prefix else \
        SharedPrefix.common(model, encoded, device) if share else None
    results: list[Generation | None] = [None] * len(prompts)
    started, generated, batch = time.time(), 0, None
    with packed_linears(model) if pack else nullcontext(), bar(label, total=len(prompts)) as progress:
        while waiting or batch is not None:
            taken: list[int] = []  # popped from the queue, not yet in the batch
            try:
                free = slots - (len(batch.rows) if batch else 0)
                if waiting and (batch is None or (free >= min(PREFILL_ROWS, max(1, slots // REFILL_SHARE)) and
                                                  batch.can_take(len(encoded[waiting[0]]), max_new_tokens))):
                    taken = [waiting.popleft() for _ in range(min(free, len(waiting), PREFILL_ROWS))]
                    new = _prefill(model, tok, taken, encoded, device, shared, sampling)
                    batch, taken = (new if batch is None else batch.merge(new)), []
                keep, finished = _harvest(tok, batch, eos, stops, max_new_tokens)
                for index, done in finished:
                    results[index] = done
                    generated += done.tokens
                    if on_result:
                        on_result(index, done)
                    progress.advance(tok_s=f"{generated / max(time.time() - started, 1e-9):.0f}")
                batch = batch.keep(keep)
                if batch is not None:
                    drafts = [draft(encoded[r.index] + r.tokens) for r in batch.rows] \
                        if speculate and sampling is None and batch.speculates() else None
                    batch.step(model, drafts)
            except torch.cuda.OutOfMemoryError:
                if slots == 1:
                    raise
                # start the unfinished rows again with half the slots: greedy decoding gives the same tokens, and
                # so does sampling (each row's generator starts again from its seed)
                back = taken + [r.index for r in (batch.rows if batch else []) if results[r.index] is None]
                waiting.extendleft(reversed(back))
                batch, slots = None, slots // 2
                torch.cuda.empty_cache()
    return results, time.time() - started


def _prefill(model, tok, indices: list[int], encoded: list[list[int]], device,
             shared: "SharedPrefix | None" = None, sampling: Sampling | None = None) -> _Batch:
    """Run the prompts at `indices` (left-padded together) and return them as a batch with their first token
    (greedy, or drawn by each row's generator with `sampling`). Prompts that start with the shared prefix's tokens
    run only the rest, after a copy of its cache."""
    sharing = [i for i in indices if shared is not None and shared.starts(encoded[i])]
    alone = [i for i in indices if i not in sharing]
    if sharing and alone:
        return _prefill(model, tok, sharing, encoded, device, shared, sampling).merge(
            _prefill(model, tok, alone, encoded, device, sampling=sampling))
    skip = len(shared.ids) if sharing else 0
    ids = [encoded[i][skip:] for i in indices]
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, x in enumerate(ids):
        input_ids[row, width - len(x):] = torch.tensor(x)
        mask[row, width - len(x):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    cache = _cache(model)
    if sharing:
        mask = torch.cat([torch.ones_like(mask[:, :1]).expand(-1, skip), mask], dim=1)  # (B, skip + width)
        for layer, (keys, values) in zip(_layers(cache), shared.kv):
            layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys.expand(len(ids), -1, -1, -1), values.expand(len(ids), -1, -1, -1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, skip:]  # (B, width): left padding shifts nothing
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                past_key_values=cache)
    rows = [_Row(i, len(encoded[i]) - 1, rng=sampling.generator(i, device) if sampling else None) for i in indices]
    return _Batch(out.past_key_values, mask, _next(out.logits[:, -1], rows, sampling), rows, sampling)


def _next(logits: torch.Tensor, rows: list[_Row], sampling: Sampling | None) -> torch.Tensor:
    """Each row's next token from its logits (B, V): the most likely, or drawn with the row's generator."""
    if sampling is None:
        return logits.argmax(-1)
    return sampling.draw(logits, [row.rng for row in rows])


def _cache(model):
    """An empty KV cache for `model` whose full-attention layers write in place (`_RoomyLayer`)."""
    cache = DynamicCache(config=model.config)
    cache.layers = [_RoomyLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


@dataclass
class SharedPrefix:
    """A prefix's tokens and their per-layer (keys, values), each (1, H, P, D), computed once."""
    ids: list[int]
    kv: list[tuple[torch.Tensor, torch.Tensor]]

    @staticmethod
    def run(model, tok, prefix: str, device) -> "SharedPrefix | None":
        """The shared prefix of `prefix`'s tokens without its last one (a token the text after it may merge with)
        and trailing special tokens; None when too short, or when a layer is not a full-attention cache."""
        ids = tok(prefix, add_special_tokens=True)["input_ids"]
        while ids and ids[-1] in tok.all_special_ids:
            ids = ids[:-1]
        return SharedPrefix.of(model, ids[:-1], device)

    @staticmethod
    def common(model, encoded: list[list[int]], device) -> "SharedPrefix | None":
        """The tokens all of `encoded` (two or more prompts) start with, but for each prompt's last: what their
        prompts share (a system turn, tool schemas); None as for `of`."""
        if len(encoded) < 2:
            return None
        shortest = min(len(ids) for ids in encoded) - 1
        same = next((j for j in range(shortest) if len({ids[j] for ids in encoded}) > 1), shortest)
        return SharedPrefix.of(model, encoded[0][:same], device)

    @staticmethod
    def of(model, ids: list[int], device) -> "SharedPrefix | None":
        """`ids` and their per-layer cache, computed once; None when shorter than SHARED_MIN_TOKENS or when a layer
        is not a full-attention cache."""
        cache = _cache(model)
        if len(ids) < SHARED_MIN_TOKENS or not all(isinstance(layer, _RoomyLayer) for layer in _layers(cache)):
            return None
        model(input_ids=torch.tensor([ids], device=device), past_key_values=cache, use_cache=True, logits_to_keep=1)
        return SharedPrefix(ids, [(layer.keys, layer.values) for layer in _layers(cache)])

    def starts(self, tokens: list[int]) -> bool:
        return len(tokens) > len(self.ids) and tokens[:len(self.ids)] == self.ids


def _harvest(tok, batch: _Batch, eos: set[int], stops: list, max_new_tokens: int
             ) -> tuple[list[int], list[tuple[int, Generation]]]:
    """After a step: the positions in `batch` of the rows still running, and (prompt index, Generation) of each row
    the step's tokens finished (one device sync a step)."""
    keep, finished = [], []
    for j, (row, produced) in enumerate(zip(batch.rows, batch.new_tokens())):
        done = _consume(tok, row, produced, eos, stops[row.index], max_new_tokens)
        if done is None:
            keep.append(j)
        else:
            finished.append((row.index, done))
    return keep, finished


def _consume(tok, row: _Row, produced: list[int], eos: set[int], stop: list[str] | str | re.Pattern | None,
             max_new_tokens: int) -> Generation | None:
    """Append a step's tokens to `row` in order; the row's Generation as soon as one of them ends it, else None."""
    for token in produced:
        row.tokens.append(token)
        done = _finished(tok, row.tokens, token, eos, stop, max_new_tokens)
        if done is not None:
            return done
    return None


def _finished(tok, tokens: list[int], last: int, eos: set[int],
              stop: list[str] | str | re.Pattern | AfterThinking | None, max_new_tokens: int) -> Generation | None:
    """The row's Generation if `last` ends it (EOS, its stop rule, or the token budget), else None."""
    if last in eos:
        return Generation(tok.decode(tokens[:-1], skip_special_tokens=True), len(tokens))
    rule, start = stop, 0
    if isinstance(stop, AfterThinking):  # the rule reads the text after the thinking (and the blank after it)
        text = tok.decode(tokens, skip_special_tokens=True)
        at = text.rfind(stop.end)
        rule, start = stop.rule, (len(text) - len(text[at + len(stop.end):].lstrip()) if at >= 0 else None)
    if start is not None and (done := _stopped(tok, tokens, last, rule, start)):
        return done
    if len(tokens) >= max_new_tokens:
        return Generation(tok.decode(tokens, skip_special_tokens=True), len(tokens))
    return None


def _stopped(tok, tokens: list[int], last: int, rule: list[str] | str | re.Pattern | None,
             start: int) -> Generation | None:
    """The row's Generation if its stop rule, read from character `start` of the text, ends it at `last`."""
    if rule is None or isinstance(rule, (str, re.Pattern)):
        if _answer_done(tok, tokens, last, ANSWER_LINE if rule is None else FIRST_LINE if rule == "line" else rule,
                        start):
            return Generation(tok.decode(tokens, skip_special_tokens=True), len(tokens))
        return None
    text = tok.decode(tokens, skip_special_tokens=True)
    cut = min((k for k in (text.find(s, start) for s in rule) if k >= 0), default=-1)
    return Generation(text[:cut], len(tokens)) if cut >= 0 else None


def _layers(cache) -> list:
    return list(cache.layers)


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """`t` with zeros added before its entries along `dim` (2 for (B, H, T, D) caches, 1 for (B, T) masks)."""
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim) + [missing, 0]
    return F.pad(t, pad)


def _sync_lengths(cache) -> None:
    """Sliding-window layers count the tokens they have seen; after padding, that is their cached width."""
    for layer in _layers(cache):
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length = layer.keys.shape[-2]


def _eos_ids(model, tok) -> set[int]:
    """The EOS, the generation config's EOS ids, and the chat template's end-of-turn marker (`chat.end_marker`)."""
    from tunelab.data import chat
    ids = {tok.eos_token_id, chat.end_marker(tok)}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, list) else {configured}
    return {i for i in ids if i is not None}


def _answer_done(tok, tokens: list[int], last: int, rule: re.Pattern, start: int = 0) -> bool:
    """True once the text (from character `start`) holds a finished answer line: a match of `rule` (ANSWER_LINE,
    FIRST_LINE or an answer pattern) ending in a newline or followed by one; decoded only when a newline may have
    arrived."""
    if "\n" not in tok.decode([last]):
        return False
    text = tok.decode(tokens, skip_special_tokens=True)[start:]
    match = rule.search(text)
    return match is not None and "\n" in text[match.end() - 1:]
