"""One UCX context per process, bound to the asyncio loop that owns every KV endpoint.

ucxx keeps a process-wide context whose completion notifier is tied to one event loop. We start
it in "thread" progress mode with Python futures: a UCX progress thread drives the network and
completions wake the loop through futures, so no coroutine busy-polls a request. Busy polling
(ucxx's default without futures) keeps a core at 100% while waiting, which on a 2-core machine
starves the torch compute thread that the layer-wise streaming overlaps with.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading

import torch

from tandem.kv.transport import KVTransferConfig, KVTransportUnavailable

logger = logging.getLogger("tandem.kv.ucx")

_bound_loop: asyncio.AbstractEventLoop | None = None
_is_exit_hook_registered = False


def ensure_ucx(config: KVTransferConfig) -> None:
    """Initialises UCX on the running loop once; raises KVTransportUnavailable on failure."""
    global _bound_loop
    loop = asyncio.get_running_loop()
    if _bound_loop is loop:
        return
    if _bound_loop is not None and not _bound_loop.is_closed():
        raise KVTransportUnavailable(
            "UCX is already bound to another running event loop in this process; run every KV sender "
            "and receiver of a process on one loop")
    try:
        import ucxx
    except ImportError as error:
        raise KVTransportUnavailable(f"UCX (the ucxx package) is not importable: {error}") from error
    if _bound_loop is not None:
        shutdown_ucx()
    options = config.normalized_ucx_options()
    if "UCX_CM_REUSEADDR" not in os.environ:
        # A restarted receiver must listen again on its advertised port at once, while the
        # previous instance's sockets still linger in TIME_WAIT.
        options.setdefault("CM_REUSEADDR", "y")
    try:
        ucxx.init(options=options, progress_mode="thread", enable_python_future=True,
                  connect_timeout=config.connect_timeout_s)
    except Exception as error:
        raise KVTransportUnavailable(
            f"UCX could not be initialised ({_describe_settings(options)}): {type(error).__name__}: {error}; "
            "check UCX_TLS / UCX_NET_DEVICES name transports and devices this host has "
            "(`ucx_info -d` lists them)") from error
    active = sorted(ucxx.get_active_transports())
    missing = [name for name in config.required_transports if not any(t.startswith(name) for t in active)]
    if missing:
        shutdown_ucx()
        raise KVTransportUnavailable(
            f"UCX started without the required transports {missing} (active: {active}; "
            f"{_describe_settings(options)}); check UCX_TLS and UCX_NET_DEVICES")
    _bound_loop = loop
    _stop_at_exit()
    logger.info("UCX initialised with transports %s", active)


def shutdown_ucx() -> None:
    """Stops the UCX notifier thread and resets the context (call before the process exits)."""
    global _bound_loop
    import ucxx

    ucxx.stop_notifier_thread()
    try:
        ucxx.reset()
    except Exception as error:
        logger.warning("UCX reset left objects alive: %s", error)
    _bound_loop = None


def _stop_at_exit() -> None:
    """Stops the notifier thread when the interpreter exits, even if shutdown_ucx was not called.

    ucxx's notifier thread is not a daemon, and the interpreter joins such threads BEFORE atexit
    handlers run, so a process that forgot shutdown_ucx would hang on exit. threading's own
    pre-join hook (the one concurrent.futures uses) runs early enough to stop it.
    """
    global _is_exit_hook_registered
    if not _is_exit_hook_registered and hasattr(threading, "_register_atexit"):
        threading._register_atexit(_stop_notifier_quietly)
        _is_exit_hook_registered = True


def _stop_notifier_quietly() -> None:
    import ucxx

    try:
        ucxx.stop_notifier_thread()
    except Exception as error:
        logger.warning("stopping the UCX notifier thread at exit failed: %s", error)


def _describe_settings(options: dict[str, str]) -> str:
    names = ("TLS", "NET_DEVICES", "RNDV_THRESH", "RNDV_SCHEME")
    shown = [f"UCX_{name}={options.get(name, os.environ.get('UCX_' + name, '<default>'))}" for name in names]
    return ", ".join(shown)


class CacheRegions:
    """Zero-copy byte views of block runs of a cache tensor, in a form ucxx accepts.

    kv_cache is [num_layers, num_blocks, 2, block_size, num_kv_heads, head_dim] and contiguous,
    so a run of consecutive blocks of one layer is one region. CPU: numpy views of the tensor's
    memory. CUDA: uint8 tensors whose __cuda_array_interface__ lets UCX read and write device
    memory with no host staging. The per-layer views are built once: slicing them per message
    is far cheaper than slicing the 6-d tensor.
    """

    def __init__(self, kv_cache: torch.Tensor) -> None:
        if not kv_cache.is_contiguous():
            raise ValueError("the KV cache tensor must be contiguous")
        layers = kv_cache.view(kv_cache.shape[0], -1).view(torch.uint8)  # [num_layers, bytes per layer]
        self._layers = layers if kv_cache.is_cuda else layers.numpy()
        self.bytes_per_block = layers.shape[1] // kv_cache.shape[1]

    def run(self, layer: int, first_block_id: int, num_blocks: int) -> object:
        """The bytes of blocks [first, first + num) of `layer`."""
        start = first_block_id * self.bytes_per_block
        return self._layers[layer][start:start + num_blocks * self.bytes_per_block]
