// The RWKV World tokenizer in JavaScript: the twin of rnnquant/tokenizer.py's WorldTokenizer
// (BlinkDL's TRIE_TOKENIZER): greedy longest match over the UTF-8 bytes, walking a trie of the
// vocabulary. `rnnquant export --web` writes the vocabulary as world_vocab.json ([[id, hex], ...]),
// so nothing here parses the Python literals of rwkv_vocab_v20230424.txt.
// Id 0 is <|endoftext|>: no bytes, decodes to nothing.

export class WorldTokenizer {
  constructor(tokens) {
    this.idToBytes = new Map();
    this.trie = new Map();
    for (const [id, hex] of tokens) {
      const bytes = Uint8Array.from(hex.match(/../g) ?? [], (h) => parseInt(h, 16));
      this.idToBytes.set(id, bytes);
      let node = this.trie;
      for (const b of bytes) {
        if (!node.has(b)) node.set(b, new Map());
        node = node.get(b);
      }
      node.id = id;
    }
  }

  encode(text) {
    const src = new TextEncoder().encode(text);
    const ids = [];
    for (let pos = 0; pos < src.length;) {
      let node = this.trie, j = pos, best = null;
      while (j < src.length && node.has(src[j])) {
        node = node.get(src[j++]);
        if (node.id !== undefined) best = [node.id, j];
      }
      if (best === null) throw new Error(`the RWKV World vocabulary has no token for byte 0x${src[pos].toString(16).padStart(2, "0")}`);
      ids.push(best[0]);
      pos = best[1];
    }
    return { ids };
  }

  // invalid UTF-8 (a character cut between tokens) becomes U+FFFD, as Python's errors="replace"
  decode(ids) {
    const parts = ids.map((i) => this.idToBytes.get(Number(i)) ?? new Uint8Array(0));
    const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) { all.set(p, at); at += p.length; }
    return new TextDecoder("utf-8").decode(all);
  }
}
