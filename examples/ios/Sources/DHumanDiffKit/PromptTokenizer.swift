// Prompt -> input_ids [1, 77] and the token index of each person's word: the Swift twin of
// dhumandiff/runtimes/tokenizer.py. Reads the bundle's tokenizer.json (Hugging Face `tokenizers` format) for the
// two models dhumandiff ships: WordLevel (the tiny world's word tokenizer) and CLIP's byte-level BPE (sd15 / xl).
// The id layout is placed here, not by the file's post-processor, exactly as in Python:
// [BOS] + tokens[..<max_length - 2] + [EOS] + [PAD] * rest.

import Foundation

public enum PromptError: Error, CustomStringConvertible {
    case empty
    case missingPersonWords(String)
    case outsideWindow(String, Int)
    case badTokenizer(String)

    public var description: String {
        switch self {
        case .empty:
            return "the prompt is empty; describe the scene and name both people, e.g. 'a man and a woman'"
        case let .missingPersonWords(detail):
            return detail
        case let .outsideWindow(word, n):
            return "the person word '\(word)' falls outside the first \(n) tokens the text encoder reads; shorten the prompt"
        case let .badTokenizer(detail):
            return "cannot read the bundle's tokenizer (\(detail)); copy the bundle again or re-export it"
        }
    }
}

public struct PromptTokenizer {
    /// Nouns naming one person, searched in prompt order when no person words are given. Same list as
    /// dhumandiff/utils/prompt.py PERSON_WORDS (tests/test_ios_sample.py compares them).
    public static let personWords: [String] = [
        "man", "woman", "boy", "girl", "bride", "groom", "mother", "father", "mom", "dad", "son", "daughter",
        "husband", "wife", "friend", "lady", "gentleman", "child", "kid", "baby", "grandmother", "grandfather",
        "grandma", "grandpa", "brother", "sister", "person", "partner", "teenager", "guy", "boyfriend", "girlfriend",
    ]

    enum Model {
        case wordLevel(vocab: [String: Int], unk: Int?)
        case bpe(vocab: [String: Int], ranks: [String: Int], suffix: String, unk: Int?)
    }

    let model: Model
    let lowercase: Bool
    let nfkc: Bool
    let byteLevel: Bool
    let split: NSRegularExpression
    public let maxLength: Int
    public let bos: Int
    public let eos: Int
    public let pad: Int

    /// CLIP's pre-tokenizer pattern (used when the file names ByteLevel but no Split pattern).
    static let clipPattern = #"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"#
    /// `tokenizers`' Whitespace pre-tokenizer.
    static let whitespacePattern = #"\w+|[^\w\s]+"#

    public init(url: URL, entry: TokenizerEntry) throws {
        guard let data = try? Data(contentsOf: url),
              let json = try JSONSerialization.jsonObject(with: data) as? [String: Any],
              let model = json["model"] as? [String: Any],
              let vocab = model["vocab"] as? [String: Int] else {
            throw PromptError.badTokenizer("\(url.lastPathComponent) is not a tokenizer.json with a vocab")
        }
        let unk = (model["unk_token"] as? String).flatMap { vocab[$0] }
        switch model["type"] as? String {
        case "WordLevel":
            self.model = .wordLevel(vocab: vocab, unk: unk)
        case "BPE":
            var ranks: [String: Int] = [:]
            for (i, m) in ((model["merges"] as? [Any]) ?? []).enumerated() {
                // tokenizers < 0.20 writes "a b", newer versions ["a", "b"]
                if let s = m as? String { ranks[s] = i } else if let p = m as? [String], p.count == 2 { ranks[p[0] + " " + p[1]] = i }
            }
            self.model = .bpe(vocab: vocab, ranks: ranks, suffix: model["end_of_word_suffix"] as? String ?? "", unk: unk)
        default:
            throw PromptError.badTokenizer("model type \(model["type"] ?? "none") is not WordLevel or BPE")
        }
        let normalizer = Self.types(json["normalizer"])
        let pre = Self.types(json["pre_tokenizer"])
        lowercase = normalizer.contains("Lowercase")
        nfkc = normalizer.contains("NFKC") || normalizer.contains("NFC")
        byteLevel = pre.contains("ByteLevel")
        let pattern = Self.splitPattern(json["pre_tokenizer"]) ?? (byteLevel ? Self.clipPattern : Self.whitespacePattern)
        split = try NSRegularExpression(pattern: pattern, options: [])
        maxLength = entry.maxLength
        bos = entry.bosTokenId
        eos = entry.eosTokenId
        pad = entry.padTokenId
    }

    /// Every "type" named in a (nested) normalizer / pre-tokenizer description.
    static func types(_ node: Any?) -> Set<String> {
        var out = Set<String>()
        if let d = node as? [String: Any] {
            if let t = d["type"] as? String { out.insert(t) }
            for v in d.values { out.formUnion(types(v)) }
        } else if let a = node as? [Any] {
            for v in a { out.formUnion(types(v)) }
        }
        return out
    }

    static func splitPattern(_ node: Any?) -> String? {
        if let d = node as? [String: Any] {
            if d["type"] as? String == "Split", let p = d["pattern"] as? [String: Any], let r = p["Regex"] as? String {
                return r
            }
            for v in d.values { if let r = splitPattern(v) { return r } }
        } else if let a = node as? [Any] {
            for v in a { if let r = splitPattern(v) { return r } }
        }
        return nil
    }

    // ------------------------------------------------------------------------------------------- encoding

    /// Token ids of the prompt (no specials), each with the UTF-16 range of the piece it came from.
    func tokens(_ prompt: String) -> [(id: Int, range: NSRange)] {
        let text = NSString(string: prompt)
        var out: [(id: Int, range: NSRange)] = []
        for m in split.matches(in: prompt, range: NSRange(location: 0, length: text.length)) {
            var piece = text.substring(with: m.range)
            if nfkc { piece = piece.precomposedStringWithCompatibilityMapping }
            if lowercase || byteLevel { piece = piece.lowercased() }  // CLIP's normalizer lowercases
            for id in ids(piece) { out.append((id, m.range)) }
        }
        return out
    }

    func ids(_ piece: String) -> [Int] {
        switch model {
        case let .wordLevel(vocab, unk):
            // tokenizers' Punctuation pre-tokenizer isolates each punctuation character
            var words: [String] = []
            var current = ""
            for ch in piece {
                if ch.isPunctuation || ch.isSymbol {
                    if !current.isEmpty { words.append(current); current = "" }
                    words.append(String(ch))
                } else {
                    current.append(ch)
                }
            }
            if !current.isEmpty { words.append(current) }
            return words.compactMap { vocab[$0] ?? unk }
        case let .bpe(vocab, ranks, suffix, unk):
            let mapped = byteLevel ? piece.utf8.map { Self.byteEncoder[Int($0)] } : piece.map { String($0) }
            return Self.bpe(mapped, ranks: ranks, suffix: suffix).compactMap { vocab[$0] ?? unk }
        }
    }

    /// Byte-pair merges, lowest rank first (GPT-2 / CLIP), with the end-of-word suffix on the last symbol.
    static func bpe(_ symbols: [String], ranks: [String: Int], suffix: String) -> [String] {
        guard !symbols.isEmpty else { return [] }
        var word = symbols
        word[word.count - 1] += suffix
        while word.count > 1 {
            var best: (rank: Int, index: Int)? = nil
            for i in 0..<(word.count - 1) {
                if let r = ranks[word[i] + " " + word[i + 1]], r < (best?.rank ?? Int.max) { best = (r, i) }
            }
            guard let b = best else { break }
            let (first, second) = (word[b.index], word[b.index + 1])
            var merged: [String] = []
            var i = 0
            while i < word.count {
                if i < word.count - 1 && word[i] == first && word[i + 1] == second {
                    merged.append(first + second)
                    i += 2
                } else {
                    merged.append(word[i])
                    i += 1
                }
            }
            word = merged
        }
        return word
    }

    /// GPT-2's byte -> printable character table (what tokenizers' ByteLevel pre-tokenizer uses).
    static let byteEncoder: [String] = {
        var bs = Array(33...126) + Array(161...172) + Array(174...255)
        var cs = bs
        var n = 0
        for b in 0..<256 where !bs.contains(b) {
            bs.append(b)
            cs.append(256 + n)
            n += 1
        }
        var table = [String](repeating: "", count: 256)
        for (b, c) in zip(bs, cs) { table[b] = String(UnicodeScalar(UInt32(c))!) }
        return table
    }()

    /// `input_ids` [max_length] in the layout every dhumandiff runtime uses, and the pieces' ranges
    /// (index 0 = BOS).
    public func encode(_ prompt: String) -> (ids: [Int32], ranges: [NSRange]) {
        let toks = tokens(prompt)
        let n = min(toks.count, maxLength - 2)
        var ids = [Int32(bos)] + toks[..<n].map { Int32($0.id) } + [Int32(eos)]
        ids += [Int32](repeating: Int32(pad), count: maxLength - ids.count)
        let end = NSRange(location: NSString(string: prompt).length, length: 0)
        let ranges = [NSRange(location: 0, length: 0)] + toks[..<n].map { $0.range } + [end]
        return (ids, ranges)
    }

    /// Token index (BOS = 0) of person A's and person B's word: the given words, or the first two person
    /// words of the prompt in prompt order. The same rules as the Python runtime.
    public func personPositions(_ prompt: String, words: (String, String)? = nil) throws -> [Int32] {
        guard !prompt.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else { throw PromptError.empty }
        let spans = try Self.personSpans(prompt, words: words)
        let (_, ranges) = encode(prompt)
        var positions: [Int32] = []
        for (word, span) in spans {
            // the first piece overlapping the word (BOS at 0 and EOS at the end never do)
            guard let i = (1..<(ranges.count - 1)).first(where: { NSIntersectionRange(ranges[$0], span).length > 0 })
            else { throw PromptError.outsideWindow(word, maxLength - 2) }
            positions.append(Int32(i))
        }
        return positions
    }

    static func occurrences(_ prompt: String, _ word: String) -> [NSRange] {
        let pattern = "(?<![A-Za-z])" + NSRegularExpression.escapedPattern(for: word) + "(?![A-Za-z])"
        guard let re = try? NSRegularExpression(pattern: pattern, options: [.caseInsensitive]) else { return [] }
        return re.matches(in: prompt, range: NSRange(location: 0, length: NSString(string: prompt).length)).map(\.range)
    }

    static func personSpans(_ prompt: String, words: (String, String)?) throws -> [(String, NSRange)] {
        if let words = words {
            let (a, b) = words
            if a.lowercased() == b.lowercased() {
                let occ = occurrences(prompt, a)
                guard occ.count >= 2 else {
                    throw PromptError.missingPersonWords("the prompt must use '\(a)' twice, once per person")
                }
                return [(a, occ[0]), (b, occ[1])]
            }
            var found: [(String, NSRange)] = []
            for w in [a, b] {
                guard let r = occurrences(prompt, w).first else {
                    throw PromptError.missingPersonWords("the prompt does not contain the person word '\(w)'")
                }
                found.append((w, r))
            }
            return found
        }
        var hits: [(String, NSRange)] = []
        for w in personWords { hits += occurrences(prompt, w).map { (w, $0) } }
        hits.sort { $0.1.location < $1.1.location }
        guard hits.count >= 2 else {
            throw PromptError.missingPersonWords("the prompt must name both people with a person word each "
                + "(e.g. 'a man and a woman'); rephrase it or pass person words")
        }
        return Array(hits.prefix(2))
    }
}
