// bundle.json, the one contract between `dhumandiff export` and every runtime (dhumandiff/contract/bundle.py
// is the strict reader; this is the subset the sample needs). Keys are spelled out in CodingKeys on purpose:
// JSONDecoder's convertFromSnakeCase would also rewrite component and tensor names ("input_ids").

import Foundation

public struct TensorSpec: Decodable {
    /// Dimensions; -1 for a named dynamic axis (Core ML bundles are static, other runtimes' may not be).
    public let shape: [Int]
    public let dtype: String

    enum CodingKeys: String, CodingKey { case shape, dtype }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        dtype = try c.decode(String.self, forKey: .dtype)
        var dims = try c.nestedUnkeyedContainer(forKey: .shape)
        var out: [Int] = []
        while !dims.isAtEnd {
            if let v = try? dims.decode(Int.self) {
                out.append(v)
            } else {
                _ = try dims.decode(String.self)
                out.append(-1)
            }
        }
        shape = out
    }

    public var count: Int { shape.reduce(1, *) }
}

public struct ComponentEntry: Decodable {
    public let file: String
    public let extraFiles: [String]
    public let sha256: [String: String]
    public let inputs: [String: TensorSpec]
    public let outputs: [String: TensorSpec]

    enum CodingKeys: String, CodingKey {
        case file, sha256, inputs, outputs
        case extraFiles = "extra_files"
    }

    /// The mlpackage / mlmodelc chunks of this component, in run order (a UNet over 1 GB ships as two).
    public var chunkFiles: [String] {
        [file] + extraFiles.filter { $0.hasSuffix(".mlpackage") || $0.hasSuffix(".mlmodelc") }
    }
}

public struct LatentSpec: Decodable {
    public let channels: Int
    public let downscale: Int
    public let scalingFactor: Float

    enum CodingKeys: String, CodingKey {
        case channels, downscale
        case scalingFactor = "scaling_factor"
    }
}

public struct TokenizerEntry: Decodable {
    public let file: String
    public let maxLength: Int
    public let padTokenId: Int
    public let bosTokenId: Int
    public let eosTokenId: Int

    enum CodingKeys: String, CodingKey {
        case file
        case maxLength = "max_length"
        case padTokenId = "pad_token_id"
        case bosTokenId = "bos_token_id"
        case eosTokenId = "eos_token_id"
    }
}

public struct IdentitySpec: Decodable {
    public let numIdTokens: Int
    public let faceSize: Int
    public let clipSize: Int
    public let clipMean: [Float]
    public let clipStd: [Float]
    public let arcfaceMean: Float
    public let arcfaceStd: Float
    public let detector: String?

    enum CodingKeys: String, CodingKey {
        case detector
        case numIdTokens = "num_id_tokens"
        case faceSize = "face_size"
        case clipSize = "clip_size"
        case clipMean = "clip_mean"
        case clipStd = "clip_std"
        case arcfaceMean = "arcface_mean"
        case arcfaceStd = "arcface_std"
    }
}

public struct Defaults: Decodable {
    public let steps: Int
    public let guidanceScale: Float
    public let ipScale: Float
    public let sampler: String
    public let cfg: Bool

    enum CodingKeys: String, CodingKey {
        case steps, sampler, cfg
        case guidanceScale = "guidance_scale"
        case ipScale = "ip_scale"
    }
}

/// The bundle's conditioning recipe (`bundle.json` `recipe`, dhumandiff/contract/recipe.py). This sample runs
/// CFG-free students, so the unconditional-branch choices (negative prompt, its text layer, the unconditional ID
/// tokens) never apply here; the region masks and what CLIP sees do.
public struct Recipe: Decodable {
    public let name: String
    public let regionMasks: Bool
    public let clipInput: String

    public static let project = Recipe(name: "dhumandiff", regionMasks: true, clipInput: "face-crop")

    enum CodingKeys: String, CodingKey {
        case name
        case regionMasks = "region_masks"
        case clipInput = "clip_input"
    }
}

public enum BundleError: Error, CustomStringConvertible {
    case invalid(String)

    public var description: String {
        switch self {
        case let .invalid(message): return message
        }
    }
}

public struct BundleManifest: Decodable {
    public static let format = "dhumandiff-bundle"
    public static let formatVersion = 1

    public let format: String
    public let formatVersion: Int
    public let backbone: String
    public let runtime: String
    public let precision: String
    public let modelName: String
    public let imageSize: [Int]
    public let latent: LatentSpec
    public let tokenizer: TokenizerEntry
    public let identity: IdentitySpec
    public let defaults: Defaults
    public let components: [String: ComponentEntry]
    /// Absent in bundles written before recipes existed: this project's own.
    public let recipe: Recipe?
    /// The bundle's scheduler section, untyped (diffusers' config dict).
    public private(set) var scheduler: [String: Any] = [:]
    public private(set) var root: URL = URL(fileURLWithPath: ".")

    enum CodingKeys: String, CodingKey {
        case format, backbone, runtime, precision, latent, tokenizer, identity, defaults, components, recipe
        case formatVersion = "format_version"
        case modelName = "model_name"
        case imageSize = "image_size"
    }

    /// Reads `<bundle>/bundle.json` and refuses a bundle this sample cannot run, with what to do instead.
    public static func load(bundle: URL) throws -> BundleManifest {
        let url = bundle.appendingPathComponent("bundle.json")
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            throw BundleError.invalid("no bundle at \(bundle.path) (bundle.json unreadable); pass the folder written by "
                + "`dhumandiff export coreml`")
        }
        var m = try JSONDecoder().decode(BundleManifest.self, from: data)
        let raw = try JSONSerialization.jsonObject(with: data) as? [String: Any]
        m.scheduler = raw?["scheduler"] as? [String: Any] ?? [:]
        m.root = bundle
        try m.check()
        return m
    }

    /// Latent grid (h, w).
    public var latentSize: (Int, Int) { (imageSize[0] / latent.downscale, imageSize[1] / latent.downscale) }

    /// The UNet batch: 2 = classifier-free guidance (uncond row first), 1 = a CFG-free few-step student.
    public var unetBatch: Int { components["unet"]?.inputs["sample"]?.shape.first ?? (defaults.cfg ? 2 : 1) }

    public func check() throws {
        guard format == Self.format, formatVersion == Self.formatVersion else {
            throw BundleError.invalid("not a dhumandiff bundle of format version \(Self.formatVersion); re-export it")
        }
        guard runtime == "coreml" else {
            throw BundleError.invalid("this bundle is for \(runtime); export one for Core ML: "
                + "`dhumandiff export coreml \(modelName) --out BUNDLE`")
        }
        for name in ["identity_encoder", "image_encoder", "face_projection", "text_encoder", "unet", "vae_decoder"]
        where components[name] == nil {
            throw BundleError.invalid("bundle.json has no \(name) component; re-export the bundle")
        }
        if components["text_encoder_2"] != nil {
            throw BundleError.invalid("SDXL bundles (two text encoders) are not wired in this sample; export an "
                + "sd15 or tiny student")
        }
        guard unetBatch == 1 else {
            throw BundleError.invalid("this sample runs the CFG-free few-step students (unet batch 1); this bundle "
                + "runs classifier-free guidance. Export a distilled student, e.g. `dhumandiff export coreml tiny-lcm`")
        }
        try checkScheduler()
    }

    /// The generated tables were computed for one noise schedule: refuse a bundle trained on another.
    public func checkScheduler() throws {
        for (key, expected) in SchedulerTables.config {
            if !Self.same(expected, scheduler[key]) {
                throw BundleError.invalid("bundle scheduler \(key) is \(scheduler[key].map { "\($0)" } ?? "missing"), "
                    + "SchedulerTables.swift was generated for \(expected); regenerate it: "
                    + "`python -m dhumandiff.runtimes.swift_tables BUNDLE --out "
                    + "examples/ios/Sources/DHumanDiffKit/SchedulerTables.swift`")
            }
        }
    }

    static func same(_ expected: Any, _ actual: Any?) -> Bool {
        guard let actual = actual, !(actual is NSNull) else { return expected is NSNull }
        switch expected {
        case let s as String: return (actual as? String) == s
        case let b as Bool: return (actual as? Bool) == b
        case let i as Int: return (actual as? NSNumber)?.doubleValue == Double(i)
        case let d as Double:
            guard let x = (actual as? NSNumber)?.doubleValue else { return false }
            return abs(x - d) <= 1e-12 * max(1.0, abs(d))
        default: return false
        }
    }

    public func url(_ relative: String) -> URL { root.appendingPathComponent(relative) }
}
