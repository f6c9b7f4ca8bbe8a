// Operational transform for plain text, as ot.js defines it and the edge-ws document server
// speaks it: an operation is an array of retains (positive integers), inserts (strings) and
// deletes (negative integers); lengths count UTF-16 code units, which is what JavaScript
// strings count. Written for the edge-ws demo page; no dependencies.
"use strict";

class TextOperation {
  constructor() {
    this.ops = [];
    this.baseLength = 0;
    this.targetLength = 0;
  }

  static isRetain(o) { return typeof o === "number" && o > 0; }
  static isInsert(o) { return typeof o === "string"; }
  static isDelete(o) { return typeof o === "number" && o < 0; }

  retain(n) {
    if (n === 0) return this;
    this.baseLength += n;
    this.targetLength += n;
    const last = this.ops.length - 1;
    if (last >= 0 && TextOperation.isRetain(this.ops[last])) this.ops[last] += n;
    else this.ops.push(n);
    return this;
  }

  insert(s) {
    if (s === "") return this;
    this.targetLength += s.length;
    const ops = this.ops;
    const last = ops.length - 1;
    if (last >= 0 && TextOperation.isInsert(ops[last])) {
      ops[last] += s;
    } else if (last >= 0 && TextOperation.isDelete(ops[last])) {
      // Keep inserts before deletes (the canonical order).
      if (last >= 1 && TextOperation.isInsert(ops[last - 1])) ops[last - 1] += s;
      else { ops.push(ops[last]); ops[last] = s; }
    } else {
      ops.push(s);
    }
    return this;
  }

  delete(n) {
    if (n === 0) return this;
    if (n > 0) n = -n;
    this.baseLength -= n;
    const last = this.ops.length - 1;
    if (last >= 0 && TextOperation.isDelete(this.ops[last])) this.ops[last] += n;
    else this.ops.push(n);
    return this;
  }

  isNoop() {
    return this.ops.length === 0 || (this.ops.length === 1 && TextOperation.isRetain(this.ops[0]));
  }

  toJSON() { return this.ops; }

  static fromJSON(ops) {
    const o = new TextOperation();
    for (const x of ops) {
      if (TextOperation.isRetain(x)) o.retain(x);
      else if (TextOperation.isInsert(x)) o.insert(x);
      else if (TextOperation.isDelete(x)) o.delete(x);
      else throw new Error("unknown operation component " + JSON.stringify(x));
    }
    return o;
  }

  apply(str) {
    if (str.length !== this.baseLength) {
      throw new Error(`base length ${this.baseLength} does not match the text (${str.length})`);
    }
    const out = [];
    let i = 0;
    for (const o of this.ops) {
      if (TextOperation.isRetain(o)) { out.push(str.slice(i, i + o)); i += o; }
      else if (TextOperation.isInsert(o)) out.push(o);
      else i -= o;
    }
    return out.join("");
  }

  // The operation doing `this` then `b`.
  compose(b) {
    const a = this;
    if (a.targetLength !== b.baseLength) throw new Error("compose: lengths do not match");
    const r = new TextOperation();
    const A = a.ops, B = b.ops;
    let i = 0, j = 0;
    let x = A[i++], y = B[j++];
    for (;;) {
      if (x === undefined && y === undefined) break;
      if (TextOperation.isDelete(x)) { r.delete(x); x = A[i++]; continue; }
      if (TextOperation.isInsert(y)) { r.insert(y); y = B[j++]; continue; }
      if (x === undefined || y === undefined) throw new Error("compose: operation too short");
      if (TextOperation.isRetain(x) && TextOperation.isRetain(y)) {
        if (x > y) { r.retain(y); x -= y; y = B[j++]; }
        else if (x === y) { r.retain(x); x = A[i++]; y = B[j++]; }
        else { r.retain(x); y -= x; x = A[i++]; }
      } else if (TextOperation.isInsert(x) && TextOperation.isDelete(y)) {
        if (x.length > -y) { x = x.slice(-y); y = B[j++]; }
        else if (x.length === -y) { x = A[i++]; y = B[j++]; }
        else { y += x.length; x = A[i++]; }
      } else if (TextOperation.isInsert(x) && TextOperation.isRetain(y)) {
        if (x.length > y) { r.insert(x.slice(0, y)); x = x.slice(y); y = B[j++]; }
        else if (x.length === y) { r.insert(x); x = A[i++]; y = B[j++]; }
        else { r.insert(x); y -= x.length; x = A[i++]; }
      } else if (TextOperation.isRetain(x) && TextOperation.isDelete(y)) {
        if (x > -y) { r.delete(y); x += y; y = B[j++]; }
        else if (x === -y) { r.delete(y); x = A[i++]; y = B[j++]; }
        else { r.delete(x); y += x; x = A[i++]; }
      } else {
        throw new Error("compose: impossible pair");
      }
    }
    return r;
  }

  // [a', b'] with apply(apply(s, a), b') === apply(apply(s, b), a'); `a` wins ties (inserts
  // at the same place: a's first), as the server does for the operation it applied first.
  static transform(a, b) {
    if (a.baseLength !== b.baseLength) throw new Error("transform: base lengths do not match");
    const a1 = new TextOperation(), b1 = new TextOperation();
    const A = a.ops, B = b.ops;
    let i = 0, j = 0;
    let x = A[i++], y = B[j++];
    for (;;) {
      if (x === undefined && y === undefined) break;
      if (TextOperation.isInsert(x)) { a1.insert(x); b1.retain(x.length); x = A[i++]; continue; }
      if (TextOperation.isInsert(y)) { a1.retain(y.length); b1.insert(y); y = B[j++]; continue; }
      if (x === undefined || y === undefined) throw new Error("transform: operation too short");
      let m;
      if (TextOperation.isRetain(x) && TextOperation.isRetain(y)) {
        if (x > y) { m = y; x -= y; y = B[j++]; }
        else if (x === y) { m = y; x = A[i++]; y = B[j++]; }
        else { m = x; y -= x; x = A[i++]; }
        a1.retain(m); b1.retain(m);
      } else if (TextOperation.isDelete(x) && TextOperation.isDelete(y)) {
        if (-x > -y) { x -= y; y = B[j++]; }
        else if (x === y) { x = A[i++]; y = B[j++]; }
        else { y -= x; x = A[i++]; }
      } else if (TextOperation.isDelete(x) && TextOperation.isRetain(y)) {
        if (-x > y) { m = y; x += y; y = B[j++]; }
        else if (-x === y) { m = y; x = A[i++]; y = B[j++]; }
        else { m = -x; y += x; x = A[i++]; }
        a1.delete(m);
      } else if (TextOperation.isRetain(x) && TextOperation.isDelete(y)) {
        if (x > -y) { m = -y; x += y; y = B[j++]; }
        else if (x === -y) { m = x; x = A[i++]; y = B[j++]; }
        else { m = x; y += x; x = A[i++]; }
        b1.delete(m);
      } else {
        throw new Error("transform: impossible pair");
      }
    }
    return [a1, b1];
  }

  // Where index `i` (a cursor) moves to through this operation; an insert at `i` pushes it.
  transformIndex(i) {
    let left = i, n = i;
    for (const o of this.ops) {
      if (TextOperation.isRetain(o)) left -= o;
      else if (TextOperation.isInsert(o)) n += o.length;
      else { n -= Math.min(left, -o); left += o; }
      if (left < 0) break;
    }
    return n;
  }

  // The operation turning `before` into `after` (one changed span: what a keystroke, a paste
  // or a cut does to a textarea).
  static diff(before, after) {
    let p = 0;
    const max = Math.min(before.length, after.length);
    while (p < max && before.charCodeAt(p) === after.charCodeAt(p)) p++;
    let s = 0;
    while (s < max - p &&
           before.charCodeAt(before.length - 1 - s) === after.charCodeAt(after.length - 1 - s)) s++;
    // Never split a surrogate pair.
    if (p > 0 && isHigh(before.charCodeAt(p - 1))) p--;
    if (s > 0 && isLow(before.charCodeAt(before.length - s))) s--;
    return new TextOperation()
      .retain(p)
      .delete(before.length - p - s)
      .insert(after.slice(p, after.length - s))
      .retain(s);
  }
}

function isHigh(c) { return c >= 0xd800 && c <= 0xdbff; }
function isLow(c) { return c >= 0xdc00 && c <= 0xdfff; }

// The ot.js client: at most one operation waiting for its ack, what is typed meanwhile
// composed into a buffer, both transformed against the server's operations.
class OtClient {
  constructor(revision, send, apply) {
    this.revision = revision;
    this.sendOp = send;     // (revision, op) => void
    this.applyOp = apply;   // (op) => void: apply a server operation to the editor
    this.outstanding = null;
    this.buffer = null;
  }

  applyClient(op) {
    if (op.isNoop()) return;
    if (this.outstanding === null) {
      this.outstanding = op;
      this.sendOp(this.revision, op);
    } else if (this.buffer === null) {
      this.buffer = op;
    } else {
      this.buffer = this.buffer.compose(op);
    }
  }

  applyServer(op) {
    this.revision++;
    if (this.outstanding !== null) {
      const [o1, op1] = TextOperation.transform(this.outstanding, op);
      this.outstanding = o1;
      op = op1;
      if (this.buffer !== null) {
        const [b1, op2] = TextOperation.transform(this.buffer, op);
        this.buffer = b1;
        op = op2;
      }
    }
    this.applyOp(op);
  }

  serverAck() {
    this.revision++;
    if (this.buffer !== null) {
      this.outstanding = this.buffer;
      this.buffer = null;
      this.sendOp(this.revision, this.outstanding);
    } else {
      this.outstanding = null;
    }
  }

  get synced() { return this.outstanding === null; }

  // Where a remote user's cursor moves when our pending operations apply on top.
  transformRemoteIndex(i) {
    if (this.outstanding !== null) i = this.outstanding.transformIndex(i);
    if (this.buffer !== null) i = this.buffer.transformIndex(i);
    return i;
  }
}

if (typeof module !== "undefined") module.exports = { TextOperation, OtClient };
