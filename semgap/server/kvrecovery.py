"""The server's KV-recovery operations: export a session's cache, import one, rebuild one from token ids.

Registered in `ModelServer.operations`; every cache they make is kept under a new handle, like a
prefill's, and every cache they consume (`release`, `base_handle`) leaves the server's store.
"""
from __future__ import annotations

import torch

from semgap.wire import names
from semgap.wire import codec

from semgap.model import runtime
from semgap.model.runtime import stopwatch, tensors_to_cache


class KvRecoveryServer:
    """Cache moves on `server`'s engine and store (a semgap.server.model_server.ModelServer: `engine`, `keep`, `take`)."""

    def __init__(self, server):
        self.server = server
        self.operations = {names.KV_EXPORT: self.kv_export, names.KV_IMPORT: self.kv_import, names.KV_EXTEND: self.kv_extend}

    def kv_export(self, tensors, meta) -> bytes:
        """The cache of `kv_handle` from position `since` on, as `k.{layer}`/`v.{layer}` [batch, heads, seq, head_dim].

        `release=1` drops the cache once it is encoded (it left this server); `compress=1` zstd-compresses it.
        """
        handle, since = meta.get(names.KV_HANDLE, ""), _count(meta, names.SINCE)
        cache = self.server.cache(handle)
        whole = self.server.engine.cache_tensors(cache)
        positions = next(iter(whole.values())).shape[2]
        if since > positions:
            raise ValueError(f"kv_export since={since} is past the cache's {positions} positions")
        rows = {name: tensor[:, :, since:] for name, tensor in whole.items()}
        response = codec.encode(rows, {"positions": str(positions)}, compress=meta.get(names.COMPRESS) == "1")
        if meta.get(names.RELEASE_AFTER) == "1":
            self.server.engine.release(self.server.take(handle))
        return response

    def kv_import(self, tensors, meta) -> bytes:
        """Keep the shipped cache rows, appended to the cache of `base_handle` if one is named; answer its handle."""
        self.server.check_weights(meta)
        layers = {f"{kind}.{index}" for index in range(self._layers()) for kind in "kv"}
        if set(tensors) != layers:
            raise ValueError(f"kv_import needs exactly {len(layers)} tensors k.0 .. v.{self._layers() - 1}; "
                             f"got {sorted(tensors)[:6]}")
        device = self.server.engine.device
        with stopwatch(device) as timing:
            rows = {name: tensor.to(device) for name, tensor in tensors.items()}
            if meta.get(names.BASE_HANDLE):
                base = self.server.engine.cache_tensors(self.server.cache(meta[names.BASE_HANDLE]))
                rows = {name: torch.cat([base[name], rows[name]], dim=2) for name in layers}
                self.server.engine.release(self.server.take(meta[names.BASE_HANDLE]))
            cache = tensors_to_cache(rows)
        return self._kept(cache, timing["ms"])

    def kv_extend(self, tensors, meta) -> bytes:
        """Recompute the cache of `input_ids` on top of the cache of `base_handle` (or from nothing); answer its handle.

        The logits of these positions are not returned: the client sampled from them before the cache was lost.
        """
        self.server.check_weights(meta)
        engine, ids = self.server.engine, tensors.get(names.INPUT_IDS)
        if ids is None or ids.dim() != 2 or ids.shape[0] != 1:
            raise ValueError("kv_extend needs input_ids of shape [1, tokens]")
        with stopwatch(engine.device) as timing:
            if not meta.get(names.BASE_HANDLE):
                cache = engine.prefill(ids).cache
            else:
                cache = engine.to_dynamic(self.server.take(meta[names.BASE_HANDLE]))
                if ids.shape[1]:
                    cache = runtime.forward(engine.model, engine.ids(ids), cache).cache
        return self._kept(cache, timing["ms"])

    def _kept(self, cache: object, compute_ms: float) -> bytes:
        positions = cache.get_seq_length() if hasattr(cache, "get_seq_length") else 0
        return codec.encode({}, {names.KV_HANDLE: self.server.keep(cache), "positions": str(int(positions)),
                                 names.SERVER_COMPUTE_MS: codec.milliseconds_text(compute_ms)})

    def _layers(self) -> int:
        return int(self.server.engine.model.config.num_hidden_layers)


def _count(meta: dict[str, str], key: str) -> int:
    text = meta.get(key, "0") or "0"
    if not text.isdigit():
        raise ValueError(f"{key}={text!r} is not a non-negative integer")
    return int(text)
