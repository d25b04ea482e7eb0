// Hands a user's numbered messages (pushes with seq > 0) to the app exactly
// once and in order, whatever order they arrive in: a duplicate is dropped;
// a message that arrives early (two logic nodes numbered 5 and 6 and 6 came
// first) waits for the missing one, and when it does not come within the gap
// wait, the client resumes from the gap (op 18). No I/O: the Client feeds it.

/**
 * What the app is handed, in order.
 * @typedef {{type: 'message', packet: import('./protocol.js').Packet} | {type: 'reset', oldest: number}} SequenceEvent
 */

export class Sequencer {
  /**
   * @param {number} last the last sequence number already handed to the app (0: none)
   * @param {number} gapWaitMs how long an early message waits for a missing one
   */
  constructor(last = 0, gapWaitMs = 500) {
    this.last = last;
    this.gapWaitMs = gapWaitMs;
    /** @type {Map<number, import('./protocol.js').Packet>} */
    this.early = new Map();
    /** @type {number | undefined} since when (ms) the oldest early message waits */
    this.waitingSince = undefined;
    /** @type {import('./protocol.js').Packet[] | undefined} what arrived while a resume is answered */
    this.gathered = undefined;
    /** @type {SequenceEvent[]} */
    this.ready = [];
  }

  /** A resume (op 18) was sent: judge what arrives once its op 19 says how. */
  resuming() {
    this.gathered ??= [];
  }

  /**
   * A push arrived.
   * @param {import('./protocol.js').Packet} packet
   * @param {number} now ms
   */
  push(packet, now) {
    const seq = packet.seq;
    if (seq === 0) {
      // Not a user message (by key, room, broadcast): as it comes.
      this.ready.push({ type: 'message', packet });
    } else if (this.gathered) {
      this.gathered.push(packet);
    } else if (seq <= this.last) {
      // A duplicate: a resume replayed it.
    } else if (seq === this.last + 1) {
      this.last = seq;
      this.ready.push({ type: 'message', packet });
      this.takeConsecutive();
    } else {
      this.early.set(seq, packet);
      this.waitingSince ??= now;
    }
  }

  /**
   * The resume was answered (op 19).
   * @param {{last: number, reset?: boolean, oldest?: number}} resumed
   * @param {number} now ms
   */
  resumed(resumed, now) {
    if (resumed.reset) {
      const oldest = resumed.oldest ?? 0;
      this.last = oldest > 0 ? oldest - 1 : resumed.last;
      this.early.clear();
      this.ready.push({ type: 'reset', oldest });
    }
    const gathered = (this.gathered ?? []).sort((a, b) => a.seq - b.seq);
    this.gathered = undefined;
    for (const packet of gathered) this.push(packet, now);
    this.waitingSince = this.early.size > 0 ? now : undefined;
  }

  /** @returns {SequenceEvent | undefined} the next event for the app */
  pop() {
    return this.ready.shift();
  }

  /** @returns {number | undefined} when (ms) a resume from the gap is due */
  resumeDue() {
    if (this.gathered || this.waitingSince === undefined) return undefined;
    return this.waitingSince + this.gapWaitMs;
  }

  takeConsecutive() {
    while (this.early.has(this.last + 1)) {
      this.last += 1;
      this.ready.push({ type: 'message', packet: this.early.get(this.last) });
      this.early.delete(this.last);
    }
    for (const seq of this.early.keys()) if (seq <= this.last) this.early.delete(seq);
    if (this.early.size === 0) this.waitingSince = undefined;
  }
}
