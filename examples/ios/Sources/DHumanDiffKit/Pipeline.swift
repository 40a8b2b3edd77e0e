// Two faces + a prompt -> one image on Core ML: the flow of dhumandiff/runtimes/generator.py for the CFG-free
// few-step students (LCM / TCD), component for component and tensor name for tensor name:
//
//   1. per person (A then B): identity_encoder(face) -> embedding; image_encoder(pixel_values) -> image_embeds;
//      face_projection(image_embeds, id_embedding) -> ip_tokens [1, 16, C], face_token [1, 1, F]
//   2. text_encoder(input_ids, face_tokens = [A, B], subject_positions = [pA, pB]) -> prompt_embeds
//   3. region_mask from the layout; ip_tokens = concat(A, B) on the token axis
//   4. latents = noise; per step unet(sample, timestep, encoder_hidden_states, ip_tokens, region_mask, ip_scale)
//      -> noise_pred, then the tabulated LCM / TCD update
//   5. vae_decoder(latent_sample = latents / scaling_factor) -> sample in [-1, 1] -> RGB

#if canImport(CoreML) && canImport(CoreGraphics) && canImport(ImageIO) && canImport(Vision)
import CoreGraphics
import CoreML
import Foundation

public struct GenerationOptions {
    /// Sampling steps (default: the bundle's `defaults.steps`); the tables hold 1, 2 and 4.
    public var steps: Int?
    /// "lcm" or "tcd" (default: the bundle's `defaults.sampler`).
    public var sampler: String?
    public var seed: UInt64 = 0
    /// Identity strength (default: the bundle's `defaults.ip_scale`).
    public var ipScale: Float?
    /// The words naming person A and person B (default: the first two person words of the prompt).
    public var personWords: (String, String)?
    public var layout: PersonLayout = .automatic
    /// Crop each photo around the largest face Vision finds (real photos); off: photos are aligned face crops.
    public var detectFaces = false

    public init() {}
}

public final class DHumanDiffPipeline {
    public let manifest: BundleManifest
    public let tokenizer: PromptTokenizer
    let configuration: MLModelConfiguration
    /// Load each graph when its phase starts and drop it when the phase ends, so peak memory is the largest
    /// component rather than all of them: what fits an SD-class student on a 4 GB iPhone.
    public let reduceMemory: Bool
    private var graphs: [String: CoreMLGraph] = [:]

    public init(bundle: URL, computeUnits: MLComputeUnits = .cpuAndNeuralEngine, reduceMemory: Bool = false) throws {
        manifest = try BundleManifest.load(bundle: bundle)
        tokenizer = try PromptTokenizer(url: manifest.url(manifest.tokenizer.file), entry: manifest.tokenizer)
        configuration = MLModelConfiguration()
        configuration.computeUnits = computeUnits
        self.reduceMemory = reduceMemory
    }

    /// Loads every graph now (first run compiles the mlpackages: seconds to minutes for SD-size UNets).
    public func prewarm() throws {
        for name in manifest.components.keys.sorted() { _ = try graph(name) }
        if reduceMemory { graphs.removeAll() }
    }

    func graph(_ name: String) throws -> CoreMLGraph {
        if let g = graphs[name] { return g }
        let g = try CoreMLGraph(name: name, manifest: manifest, configuration: configuration)
        graphs[name] = g
        return g
    }

    func run(_ name: String, _ inputs: [String: Tensor]) throws -> [String: Tensor] {
        try graph(name).run(inputs)
    }

    func done(_ names: String...) {
        if reduceMemory { for n in names { graphs[n] = nil } }
    }

    struct Person {
        let ipTokens: Tensor
        let faceToken: Tensor
    }

    func encodePerson(_ photo: CGImage, detectFaces: Bool) throws -> Person {
        let id = manifest.identity
        var face = photo
        if detectFaces, let crop = try FaceCrop.largestFace(in: photo) { face = crop }
        let embedding = try run("identity_encoder", [
            "face": Images.faceTensor(face, size: id.faceSize, mean: id.arcfaceMean, std: id.arcfaceStd),
        ]).require("embedding", from: "identity_encoder")
        let wholePhoto = (manifest.recipe ?? .project).clipInput == "photo"  // the official recipe
        let clip = try run("image_encoder", [
            "pixel_values": Images.clipTensor(wholePhoto ? photo : face, size: id.clipSize, mean: id.clipMean,
                                              std: id.clipStd),
        ]).require("image_embeds", from: "image_encoder")
        let proj = try run("face_projection", ["image_embeds": clip, "id_embedding": embedding])
        return Person(ipTokens: try proj.require("ip_tokens", from: "face_projection"),
                      faceToken: try proj.require("face_token", from: "face_projection"))
    }

    /// Generates one image of person A (`faceA`) and person B (`faceB`). Every user input (steps, sampler,
    /// prompt and person words) is checked before a graph runs.
    public func generate(faceA: CGImage, faceB: CGImage, prompt: String, options: GenerationOptions = .init(),
                         progress: ((Int, Int) -> Void)? = nil) throws -> CGImage {
        let m = manifest
        let table = try SchedulerTables.table(sampler: options.sampler ?? m.defaults.sampler,
                                              steps: options.steps ?? m.defaults.steps)
        let positions = try tokenizer.personPositions(prompt, words: options.personWords)
        let ids = tokenizer.encode(prompt).ids
        let (h, w) = m.latentSize
        let c = m.latent.channels
        let regionMasks = (manifest.recipe ?? .project).regionMasks  // false: the official recipe, no masks
        let mask = Tensor(shape: [1, 2, h, w], values: regionMasks ? options.layout.regionMask(height: h, width: w)
                                                                   : [Float](repeating: 1, count: 2 * h * w))

        let a = try encodePerson(faceA, detectFaces: options.detectFaces)
        let b = try encodePerson(faceB, detectFaces: options.detectFaces)
        done("identity_encoder", "image_encoder", "face_projection")

        let context = try run("text_encoder", [
            "input_ids": Tensor(shape: [1, ids.count], ints: ids),
            "face_tokens": Tensor.concatTokens(a.faceToken, b.faceToken),
            "subject_positions": Tensor(shape: [1, 2], ints: positions),
        ]).require("prompt_embeds", from: "text_encoder")
        done("text_encoder")

        let fixed: [String: Tensor] = [
            "encoder_hidden_states": context,
            "ip_tokens": Tensor.concatTokens(a.ipTokens, b.ipTokens),
            "region_mask": mask,
            "ip_scale": .scalar(options.ipScale ?? m.defaults.ipScale),
        ]
        var noise = NoiseSource(seed: options.seed)
        let unet: ([Float], Float) throws -> [Float] = { x, t in
            var inputs = fixed
            inputs["sample"] = Tensor(shape: [1, c, h, w], values: x)
            inputs["timestep"] = .scalar(t)
            return try self.run("unet", inputs).require("noise_pred", from: "unet").values
        }
        let latents = try ConsistencySampler(table: table).sample(latentCount: c * h * w, noise: &noise,
                                                                  progress: progress, model: unet)
        done("unet")

        let decoded = try run("vae_decoder", [
            "latent_sample": Tensor(shape: [1, c, h, w], values: latents.map { $0 / m.latent.scalingFactor }),
        ]).require("sample", from: "vae_decoder")
        done("vae_decoder")
        return try Images.image(fromCHW: decoded.values, height: m.imageSize[0], width: m.imageSize[1])
    }
}
#endif
