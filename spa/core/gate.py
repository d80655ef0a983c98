"""The gate: turns a Knock into Accepted, Duplicate or Rejection. No I/O of its own.

Order of checks, cheapest first, so junk costs one AES block and a compare:
form and length, version, key id, time window, replay ledger, per-source
rate, then the MAC (constant time) or one-time code, then policy and the
per-key rate. A token is recorded in the ledger before the gate answers
Accepted; if it cannot be recorded the knock is refused (fails closed).

A repeat of an accepted token that would open the same address within
``repeat_window`` seconds is a Duplicate (ping sends its pattern every
second, resolvers retry for ~30 s); anything else seen before is a replay.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from . import addresses, compact, datagram, otp
from .compact import AddressMode
from .events import (
    Accepted,
    Carrier,
    Decision,
    Duplicate,
    Form,
    Grant,
    IPAddress,
    Knock,
    OtpCode,
    Reason,
    Rejection,
    Request,
    SequenceHit,
    StaticHit,
)
from .guesses import CodeLimits, Guesses
from .keyring import KeyEntry, Keyring
from .ledger import FOREVER, Entry, Ledger
from .limits import Buckets
from .sequence import SequenceRule, ports


@dataclass(frozen=True)
class GateSettings:
    """Tunables of the gate, from the ``[server]``, ``[limits]`` and ``[otp]`` tables."""

    time_window: int = 60  # seconds a token's time may differ from ours, either way
    repeat_window: int = 30  # seconds in which a repeat is the same knock
    totp_interval: int = 30
    totp_steps: int = 1  # TOTP steps accepted either side of now
    sequence: SequenceRule = field(default_factory=SequenceRule)
    source_rate: float = 5.0  # verifications per second per source address
    source_burst: int = 20
    key_rate: float = 0.5  # grants per second per key
    key_burst: int = 10
    otp_failures_per_source: int = 5  # then the source is locked out (failure_period, lockout_seconds)
    otp_failures_per_key: int = 20  # the key's wrong-code budget at once ...
    otp_failures_per_key_per_day: float = 10.0  # ... and how much it grows back each day
    failure_period: int = 600
    lockout_seconds: int = 300
    tracked_sources: int = 65536

    def __post_init__(self) -> None:
        if not 1 <= self.time_window <= 3600:
            raise ValueError("time_window must be 1-3600 seconds")
        if not 0 <= self.repeat_window <= self.time_window:
            raise ValueError("repeat_window must be 0..time_window seconds")

    @property
    def codes(self) -> CodeLimits:
        """The limits on wrong one-time codes (spa.core.guesses)."""
        return CodeLimits(
            self.otp_failures_per_key, self.otp_failures_per_key_per_day, self.otp_failures_per_source,
            self.failure_period, self.lockout_seconds, self.tracked_sources,
        )


class Gate:
    """Decides knocks against a keyring, a ledger, the wrong-code state and bounded rate state.

    The ledger and the wrong-code state (``guesses``) are what a restart must
    not forget; the daemon passes persistent ones. The rate buckets are
    saved whole every few seconds and at a stop (spa.core.rates).
    """

    def __init__(self, keyring: Keyring, ledger: Ledger, settings: GateSettings | None = None,
                 guesses: Guesses | None = None) -> None:
        self.keyring = keyring
        self.ledger = ledger
        self.settings = settings or GateSettings()
        s = self.settings
        self.guesses = guesses if guesses is not None else Guesses(s.codes)
        self.counts: Counter[str] = Counter()
        self._source_rate = Buckets(s.source_rate, s.source_burst, s.tracked_sources)
        self._key_rate = Buckets(s.key_rate, s.key_burst, s.tracked_sources)
        self._handlers = {
            Form.COMPACT: self._compact,
            Form.EXTENDED: self._extended,
            Form.DATAGRAM: self._datagram,
            Form.OTP: self._otp,
            Form.SEQUENCE: self._sequence,
            Form.STATIC: self._static,
        }

    def buckets(self) -> dict[str, Buckets]:
        """The rate buckets, by name, for spa.core.rates to save and restore."""
        return {"source": self._source_rate, "key": self._key_rate}

    def decide(self, knock: Knock) -> Decision:
        decision = self._handlers[knock.form](knock)
        if type(decision) is Rejection:
            self.counts[decision.reason.name] += 1
        else:
            self.counts[type(decision).__name__] += 1
        return decision

    # -- helpers ---------------------------------------------------------

    def _reject(self, knock: Knock, reason: Reason, detail: str = "", key: str | None = None,
                alarm: bool = False) -> Rejection:
        return Rejection(reason, knock.source, knock.carrier, detail, key, alarm)

    def _stale(self, knock: Knock, token_time: int) -> str | None:
        """Why ``token_time`` is unacceptable now, or None if it is fine."""
        skew = token_time - int(knock.received)
        if abs(skew) > self.settings.time_window:
            return (
                f"token time is {skew:+d} s from the server clock (window ±{self.settings.time_window} s); "
                "check the clock of the knocking device, and of this server"
            )
        if token_time <= self.ledger.floor:
            return "token older than the replay horizon (did the server clock step back?)"
        return None

    def _seen(self, knock: Knock, token_id: bytes, address: IPAddress, key: str) -> Decision | None:
        """Duplicate or replay verdict for a token already in the ledger."""
        entry = self.ledger.get(token_id)
        if entry is None:
            return None
        if entry.address == address and knock.received - entry.accepted <= self.settings.repeat_window:
            return Duplicate(knock.source, knock.carrier, key)
        # A code without an address in it opens the packet's source; over DNS
        # that is a resolver, and resolvers retry from other addresses: no alarm.
        payload = knock.payload
        named = isinstance(payload, OtpCode) and (payload.address is not None or knock.carrier != Carrier.DNS)
        if knock.form == Form.OTP and entry.address != address and named:
            # A code names no address under a MAC: whoever saw it in flight can
            # send it first for their own (docs/threat-model.md, "Code races").
            return self._reject(
                knock, Reason.REPLAY,
                f"code first used for {entry.address}; if that was not its owner, the code was seen in flight",
                key, alarm=True,
            )
        return self._reject(knock, Reason.REPLAY, f"first accepted for {entry.address}", key)

    def _finish(
        self,
        knock: Knock,
        entry: KeyEntry,
        token_id: bytes,
        time: int,
        address: IPAddress,
        requests: tuple[Request, ...],
        seconds: int = 0,
        unbound: bool = False,
        code: bool = False,
    ) -> Decision:
        """Policy, per-key rate and the ledger: the common end of every form.

        Called only for knocks that passed authentication. A mapped address
        never gets here from a decoder; refusing it again keeps the rule in
        one place for every form (docs/protocol.md, "Addresses").
        """
        mapped = addresses.refusal(address)
        if mapped:
            return self._reject(knock, Reason.MALFORMED, mapped, entry.name)
        policy = entry.record.policy
        refusal = policy.refusal(knock.carrier, address, requests, unbound, code)
        if refusal:
            return self._reject(knock, Reason.POLICY, refusal, entry.name)
        if not self._key_rate.take(entry.record.key_id, knock.received):
            return self._reject(knock, Reason.RATE_LIMITED, "too many grants for this key", entry.name)
        try:
            self.ledger.record(token_id, Entry(address, knock.received, time), knock.received)
        except OSError as problem:
            return self._reject(knock, Reason.STATE_UNWRITABLE, problem.strerror or str(problem), entry.name)
        granted = policy.grant_seconds(seconds)
        grants = tuple([Grant(address, r, granted, entry.name, knock.carrier, policy.single_use) for r in requests])
        return Accepted(grants, entry.name, knock.carrier, knock.source)

    # -- compact and extended tokens -------------------------------------

    def _compact(self, knock: Knock) -> Decision:
        payload = knock.payload
        if not isinstance(payload, bytes) or len(payload) != compact.SIZE:
            return self._reject(knock, Reason.MALFORMED, "not a compact token")
        return self._token(knock, payload, None)

    def _extended(self, knock: Knock) -> Decision:
        payload = knock.payload
        if not isinstance(payload, bytes) or len(payload) not in compact.EXTENDED_SIZES:
            return self._reject(knock, Reason.MALFORMED, "not an extended token")
        return self._token(knock, payload[: compact.SIZE], payload)

    def _token(self, knock: Knock, token: bytes, extended: bytes | None) -> Decision:
        """Compact and extended tokens; ``extended`` is the whole extended token."""
        opened = compact.open_block(self.keyring.obfuscator, token)
        if opened is None:
            return self._reject(knock, Reason.MALFORMED, "not an spa token")
        fields, plain = opened
        if (fields.mode == AddressMode.EXPLICIT) != (extended is not None):
            return self._reject(knock, Reason.MALFORMED, "address mode does not fit the form")
        entry = self.keyring.by_id.get(fields.key_id)
        if entry is None or entry.mac_key is None:
            return self._reject(knock, Reason.UNKNOWN_KEY, f"key id {fields.key_id}")
        stale = self._stale(knock, fields.time)
        if stale:
            return self._reject(knock, Reason.STALE, stale, entry.name)
        address = knock.source if extended is None else compact.unmask_address(self.keyring.obfuscator, extended)
        mapped = addresses.refusal(address)
        if mapped:
            return self._reject(knock, Reason.MALFORMED, mapped, entry.name)
        seen = self._seen(knock, token, address, entry.name)
        if seen is not None:
            return seen
        if not self._source_rate.take(knock.source.packed, knock.received):
            return self._reject(knock, Reason.RATE_LIMITED, "too many attempts from this source", entry.name)
        bound = None if fields.mode == AddressMode.UNBOUND else address
        if not compact.mac_matches(entry.mac_key, plain, bound):
            return self._reject(knock, Reason.BAD_MAC, "", entry.name)
        policy = entry.record.policy
        if fields.request_index >= len(policy.open):
            return self._reject(knock, Reason.POLICY, f"no port at index {fields.request_index}", entry.name)
        return self._finish(
            knock, entry, token, fields.time, address, (policy.open[fields.request_index],),
            unbound=fields.mode == AddressMode.UNBOUND,
        )

    # -- SPA datagrams ---------------------------------------------------

    def _datagram(self, knock: Knock) -> Decision:
        payload = knock.payload
        header = datagram.open_header(self.keyring.obfuscator, payload) if isinstance(payload, bytes) else None
        if header is None:
            return self._reject(knock, Reason.MALFORMED, "not an spa datagram")
        entry = self.keyring.by_id.get(header.key_id)
        signed = header.kind == datagram.Kind.SIGNED
        if entry is None or (entry.verify_key if signed else entry.aead) is None:
            return self._reject(knock, Reason.UNKNOWN_KEY, f"key id {header.key_id}")
        stale = self._stale(knock, header.time)
        if stale:
            return self._reject(knock, Reason.STALE, stale, entry.name)
        previous = self.ledger.get(header.sealed)
        if previous is not None:
            # The address is only known after decryption; a repeat to the
            # same address is judged below, anything else is a replay now.
            if knock.received - previous.accepted > self.settings.repeat_window:
                return self._reject(knock, Reason.REPLAY, f"first accepted for {previous.address}", entry.name)
        if not self._source_rate.take(knock.source.packed, knock.received):
            return self._reject(knock, Reason.RATE_LIMITED, "too many attempts from this source", entry.name)
        aead = self.keyring.wire if signed else entry.aead
        assert aead is not None and isinstance(payload, bytes)  # both checked above
        body = datagram.open_body(header, payload, aead, knock.source, entry.verify_key if signed else None,
                                  self.keyring.server_id if signed else None)
        if isinstance(body, Reason):
            detail = "not exactly one body" if body == Reason.MALFORMED else ""
            return self._reject(knock, body, detail, entry.name)
        address = body.address if body.address is not None else knock.source
        mapped = addresses.refusal(address)
        if mapped:
            return self._reject(knock, Reason.MALFORMED, mapped, entry.name)
        seen = self._seen(knock, header.sealed, address, entry.name)
        if seen is not None:
            return seen
        return self._finish(
            knock, entry, header.sealed, header.time, address, body.requests,
            seconds=body.seconds, unbound=body.mode == datagram.Mode.UNBOUND,
        )

    # -- one-time codes --------------------------------------------------

    def _otp(self, knock: Knock) -> Decision:
        code = knock.payload
        if not isinstance(code, OtpCode):
            return self._reject(knock, Reason.MALFORMED, "not a one-time code")
        entry = self.keyring.find(code.who)
        if entry is None:
            return self._reject(knock, Reason.UNKNOWN_KEY, f"key {code.who}")
        record = entry.record
        if not record.policy.allow_codes:  # before the budget: strangers cannot spend what is not used
            return self._reject(knock, Reason.POLICY, "one-time codes not allowed for this key (allow_codes)",
                                entry.name)
        now = knock.received
        source = knock.source.packed
        refused = self.guesses.refusal(record.key_id, source, now)
        if refused:
            return self._reject(knock, Reason.LOCKED_OUT, refused, entry.name)
        found = self._match_code(entry, code.digits, now)
        if found is None:
            return self._wrong_code(knock, entry, source, now)
        token_id, token_time = found
        address = code.address if code.address is not None else knock.source
        seen = self._seen(knock, token_id, address, entry.name)
        if seen is not None:
            return seen  # a used code is no success: replaying one must not clear the source's count
        decision = self._finish(knock, entry, token_id, token_time, address, (record.policy.open[0],), code=True)
        if isinstance(decision, Accepted):
            self.guesses.right(source)
        return decision

    def _wrong_code(self, knock: Knock, entry: KeyEntry, source: bytes, now: float) -> Rejection:
        """Count a wrong code against its key's budget and its source; alarm at the first and the last."""
        try:
            strike = self.guesses.wrong(entry.record.key_id, source, now)
        except OSError as problem:  # counted in memory; codes are refused unchecked until it can be written
            return self._reject(knock, Reason.BAD_CODE, f"code does not match; not recorded: {problem}",
                                entry.name, alarm=True)
        limit = self.guesses.limits
        detail = f"code does not match; {strike.left} of {limit.key_burst} wrong codes left for this key"
        if strike.spent:
            detail += "; its codes are refused now (possible guessing: key-file knocks still work)"
        elif strike.first:
            detail += " (a typo, or the first sign of guessing)"
        elif strike.left == limit.key_burst // 2:
            detail += " (half the budget gone: guessing?)"
        if strike.source_locked:
            detail += f"; source locked out for {strike.source_locked:.0f} s"
        alarm = strike.first or strike.spent or strike.left == limit.key_burst // 2
        return self._reject(knock, Reason.BAD_CODE, detail, entry.name, alarm=alarm)

    def _match_code(self, entry: KeyEntry, digits: str, now: float) -> tuple[bytes, int] | None:
        """The ledger id and time of the code ``digits`` matches, or None."""
        record = entry.record
        key_id = record.key_id.to_bytes(2, "big")
        if len(digits) == otp.EMERGENCY_DIGITS:
            counter = entry.emergency.get(digits)
            if counter is None:
                return None
            return b"hotp" + key_id + counter.to_bytes(4, "big"), FOREVER
        if not record.totp_secret or len(digits) != record.totp_digits:
            return None
        interval = self.settings.totp_interval
        current = int(now) // interval
        for counter in range(current - self.settings.totp_steps, current + self.settings.totp_steps + 1):
            if counter >= 0 and otp.totp_matches(record.totp_secret, digits, counter):
                time = counter * interval
                if time <= self.ledger.floor:
                    return None
                return b"totp" + key_id + counter.to_bytes(8, "big"), time
        return None

    # -- port sequences --------------------------------------------------

    def sequences(self, now: float) -> dict[tuple[int, ...], SequenceHit]:
        """Every port sequence acceptable at ``now``, for the sequence carrier.

        Covers the steps within the time window on either side of now.
        """
        rule = self.settings.sequence
        reach = self._sequence_reach()
        current = rule.step_at(now)
        table: dict[tuple[int, ...], SequenceHit] = {}
        for entry in self.keyring.by_id.values():
            if entry.sequence_key is None or Carrier.SEQUENCE not in entry.record.policy.carriers:
                continue
            for step in range(current - reach, current + reach + 1):
                for index in range(len(entry.record.policy.open)):
                    hit = SequenceHit(entry.record.key_id, step, index)
                    table[ports(entry.sequence_key, step, index, rule)] = hit
        return table

    def _sequence_reach(self) -> int:
        """How many steps either side of now the time window covers (rounded up)."""
        return -(-self.settings.time_window // self.settings.sequence.step_seconds)

    def _sequence(self, knock: Knock) -> Decision:
        hit = knock.payload
        if not isinstance(hit, SequenceHit):
            return self._reject(knock, Reason.MALFORMED, "not a sequence")
        entry = self.keyring.by_id.get(hit.key_id)
        if entry is None or entry.sequence_key is None:
            return self._reject(knock, Reason.UNKNOWN_KEY, f"key id {hit.key_id}")
        rule = self.settings.sequence
        if abs(hit.step - rule.step_at(knock.received)) > self._sequence_reach():
            return self._reject(knock, Reason.STALE, f"sequence of step {hit.step} is outside the window", entry.name)
        if hit.step * rule.step_seconds <= self.ledger.floor:
            return self._reject(knock, Reason.STALE, "sequence older than the replay horizon", entry.name)
        policy = entry.record.policy
        if hit.request_index >= len(policy.open):
            return self._reject(knock, Reason.POLICY, f"no port at index {hit.request_index}", entry.name)
        token_id = b"seq" + hit.key_id.to_bytes(2, "big") + hit.step.to_bytes(8, "big") + bytes([hit.request_index])
        seen = self._seen(knock, token_id, knock.source, entry.name)
        if seen is not None:
            return seen
        return self._finish(
            knock, entry, token_id, hit.step * rule.step_seconds, knock.source, (policy.open[hit.request_index],)
        )

    def _static(self, knock: Knock) -> Decision:
        """A fixed sequence: no token, so no ledger; policy and rates still apply.

        Anyone who saw the ports can send them again: that is the known
        weakness of fixed sequences, accepted here for knockd compatibility.
        """
        hit = knock.payload
        if not isinstance(hit, StaticHit):
            return self._reject(knock, Reason.MALFORMED, "not a fixed sequence")
        static = self.keyring.statics.get(hit.name)
        if static is None:
            return self._reject(knock, Reason.UNKNOWN_KEY, f"sequence {hit.name}")
        who = f"sequence:{static.name}"
        policy = static.policy
        refusal = policy.refusal(knock.carrier, knock.source, policy.open, False)
        if refusal:
            return self._reject(knock, Reason.POLICY, refusal, who)
        if not self._source_rate.take(knock.source.packed, knock.received):
            return self._reject(knock, Reason.RATE_LIMITED, "too many attempts from this source", who)
        if not self._key_rate.take(who, knock.received):
            return self._reject(knock, Reason.RATE_LIMITED, "too many grants for this sequence", who)
        seconds = policy.grant_seconds(0)
        grants = tuple(Grant(knock.source, r, seconds, who, knock.carrier, policy.single_use) for r in policy.open)
        return Accepted(grants, who, knock.carrier, knock.source)
