"""Playing synthesized speech through ALSA with ``aplay``.

One ``aplay`` process plays one answer: its pieces are written into the same
stream as they are synthesized, so there is no gap between sentences beyond
the voice's own pauses. Killing the process silences the speaker at once
(barge-in); ALSA drops what it had buffered.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np

from appliance.voice.tts import SpeechError


def require_aplay() -> None:
    """Raise :class:`SpeechError` when ``aplay`` is missing."""
    if shutil.which("aplay") is None:
        raise SpeechError("aplay is not installed (apt-get install alsa-utils)")


class Playback:
    """An ``aplay`` stream to ``device`` (ALSA's default when ``None``).

    ``volume`` (0 to 1) scales the samples: the appliance's own volume, on top
    of the mixer's.
    """

    def __init__(self, device: str | None = None, volume: float = 1.0) -> None:
        self.device, self.volume = device, volume
        self._proc: subprocess.Popen[bytes] | None = None
        self._rate = 0

    def open(self, rate: int) -> None:
        """Make sure a stream at ``rate`` Hz is open."""
        if self._proc is not None and self._rate != rate:
            self.end()
        if self._proc is not None:
            return
        require_aplay()
        device = ["-D", self.device] if self.device else []
        self._proc = subprocess.Popen(
            ["aplay", "-q", *device, "-t", "raw", "-f", "S16_LE", "-c", "1", "-r", str(rate)],
            stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        self._rate = rate

    def write(self, pcm: bytes) -> None:
        """Write to the open stream; blocks while the device's buffer is full.

        Returns quietly when :meth:`cut` closed the stream meanwhile.
        """
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        if self.volume != 1.0:
            pcm = (np.frombuffer(pcm, dtype=np.int16) * self.volume).astype(np.int16).tobytes()
        try:
            proc.stdin.write(pcm)
            proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            if self._proc is proc:  # aplay failed; a cut() would have dropped it first
                self._proc = None
                self._fail(proc)

    def end(self) -> None:
        """Let what was written play out, then close the stream (a :meth:`cut` still stops it)."""
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except BrokenPipeError:
            pass
        code = proc.wait()
        if self._proc is not proc:
            return  # cut meanwhile
        self._proc = None
        if code > 0:
            self._fail(proc)
        self._close(proc)

    def cut(self) -> None:
        """Stop at once, dropping what is buffered."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
            self._close(proc)

    def _fail(self, proc: subprocess.Popen[bytes]) -> None:
        proc.kill()
        proc.wait()
        assert proc.stderr is not None
        lines = proc.stderr.read().decode(errors="replace").strip().splitlines()
        self._close(proc)
        raise SpeechError(f"cannot play speech on {self.device or 'the default ALSA device'}: "
                          f"{lines[-1] if lines else f'aplay exit {proc.returncode}'}")

    @staticmethod
    def _close(proc: subprocess.Popen[bytes]) -> None:
        for pipe in (proc.stdin, proc.stderr):
            try:
                if pipe is not None:
                    pipe.close()
            except BrokenPipeError:
                pass
