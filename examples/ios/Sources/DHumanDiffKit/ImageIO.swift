// Photos in, PNG out, with the preprocessing of dhumandiff/contract/images.py: centre-crop to a square, resize
// to the encoder's size, then identity encoder: (RGB - arcface_mean) / arcface_std; CLIP: (RGB / 255 - mean) / std,
// channel-major [1, 3, S, S]. CoreGraphics' high-quality resampling is close to, not identical with, PIL's
// bicubic, so device images differ slightly from Python ones.

#if canImport(CoreGraphics) && canImport(ImageIO)
import CoreGraphics
import Foundation
import ImageIO

public enum ImageError: Error, CustomStringConvertible {
    case unreadable(String)
    case unwritable(String)

    public var description: String {
        switch self {
        case let .unreadable(path): return "input image \(path) is not a readable image; pass a JPEG, PNG or HEIC photo"
        case let .unwritable(path): return "cannot write \(path); check the folder and its permissions"
        }
    }
}

public enum Images {
    /// The photo at `url`, upright (EXIF orientation applied).
    public static func load(_ url: URL) throws -> CGImage {
        guard let source = CGImageSourceCreateWithURL(url as CFURL, nil),
              let props = CGImageSourceCopyPropertiesAtIndex(source, 0, nil) as? [CFString: Any],
              let w = props[kCGImagePropertyPixelWidth] as? Int, let h = props[kCGImagePropertyPixelHeight] as? Int
        else { throw ImageError.unreadable(url.path) }
        let options: [CFString: Any] = [
            kCGImageSourceCreateThumbnailFromImageAlways: true,
            kCGImageSourceCreateThumbnailWithTransform: true,
            kCGImageSourceThumbnailMaxPixelSize: max(w, h),
        ]
        guard let image = CGImageSourceCreateThumbnailAtIndex(source, 0, options as CFDictionary) else {
            throw ImageError.unreadable(url.path)
        }
        return image
    }

    /// The centred square of `image` (contract/images.py square_resize crops the same square).
    public static func centerSquare(_ image: CGImage) -> CGImage {
        let s = min(image.width, image.height)
        let rect = CGRect(x: (image.width - s) / 2, y: (image.height - s) / 2, width: s, height: s)
        return image.cropping(to: rect) ?? image
    }

    /// HWC RGB bytes of `image` resized to `size` x `size`; transparency is composited on white (as to_rgb does).
    public static func rgb(_ image: CGImage, size: Int) -> [UInt8] {
        var rgba = [UInt8](repeating: 255, count: size * size * 4)
        let space = CGColorSpace(name: CGColorSpace.sRGB) ?? CGColorSpaceCreateDeviceRGB()
        rgba.withUnsafeMutableBytes { buffer in
            guard let ctx = CGContext(data: buffer.baseAddress, width: size, height: size, bitsPerComponent: 8,
                                      bytesPerRow: size * 4, space: space,
                                      bitmapInfo: CGImageAlphaInfo.premultipliedLast.rawValue) else { return }
            let rect = CGRect(x: 0, y: 0, width: size, height: size)
            ctx.setFillColor(CGColor(red: 1, green: 1, blue: 1, alpha: 1))
            ctx.fill(rect)
            ctx.interpolationQuality = .high
            ctx.draw(image, in: rect)
        }
        var rgb = [UInt8]()
        rgb.reserveCapacity(size * size * 3)
        for i in 0..<(size * size) {
            rgb.append(rgba[4 * i])
            rgb.append(rgba[4 * i + 1])
            rgb.append(rgba[4 * i + 2])
        }
        return rgb
    }

    /// Identity-encoder input [1, 3, size, size]: (RGB 0...255 - mean) / std.
    public static func faceTensor(_ image: CGImage, size: Int, mean: Float, std: Float) -> Tensor {
        chw(rgb(centerSquare(image), size: size), size: size) { v, _ in (v - mean) / std }
    }

    /// CLIP image-encoder input [1, 3, size, size]: (RGB / 255 - mean[c]) / std[c].
    public static func clipTensor(_ image: CGImage, size: Int, mean: [Float], std: [Float]) -> Tensor {
        chw(rgb(centerSquare(image), size: size), size: size) { v, c in (v / 255 - mean[c]) / std[c] }
    }

    static func chw(_ rgb: [UInt8], size: Int, _ f: (Float, Int) -> Float) -> Tensor {
        let plane = size * size
        var out = [Float](repeating: 0, count: 3 * plane)
        for c in 0..<3 {
            for i in 0..<plane { out[c * plane + i] = f(Float(rgb[3 * i + c]), c) }
        }
        return Tensor(shape: [1, 3, size, size], values: out)
    }

    /// VAE output [1, 3, H, W] in [-1, 1] -> an RGB image, rounded as contract/images.py postprocess rounds
    /// (round half to even of (x / 2 + 0.5) * 255).
    public static func image(fromCHW x: [Float], height h: Int, width w: Int) throws -> CGImage {
        let plane = h * w
        var rgba = [UInt8](repeating: 255, count: plane * 4)
        for c in 0..<3 {
            for i in 0..<plane {
                let v = min(max(x[c * plane + i] / 2 + 0.5, 0), 1)
                rgba[4 * i + c] = UInt8((v * 255).rounded(.toNearestOrEven))
            }
        }
        let space = CGColorSpace(name: CGColorSpace.sRGB) ?? CGColorSpaceCreateDeviceRGB()
        guard let provider = CGDataProvider(data: Data(rgba) as CFData),
              let image = CGImage(width: w, height: h, bitsPerComponent: 8, bitsPerPixel: 32, bytesPerRow: w * 4,
                                  space: space, bitmapInfo: CGBitmapInfo(rawValue: CGImageAlphaInfo.noneSkipLast.rawValue),
                                  provider: provider, decode: nil, shouldInterpolate: false, intent: .defaultIntent)
        else { throw ImageError.unwritable("the decoded image") }
        return image
    }

    /// Writes a PNG atomically: a hidden sibling first, renamed into place (never half a PNG under `url`).
    public static func writePNG(_ image: CGImage, to url: URL) throws {
        let tmp = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).partial.png")
        guard let dest = CGImageDestinationCreateWithURL(tmp as CFURL, "public.png" as CFString, 1, nil) else {
            throw ImageError.unwritable(url.path)
        }
        CGImageDestinationAddImage(dest, image, nil)
        guard CGImageDestinationFinalize(dest), rename(tmp.path, url.path) == 0 else {
            try? FileManager.default.removeItem(at: tmp)
            throw ImageError.unwritable(url.path)
        }
    }
}
#endif

#if canImport(Vision) && canImport(CoreGraphics)
import CoreGraphics
import Vision

public enum FaceCrop {
    /// The square crop around the largest face Vision finds (side = the larger side of its box, as
    /// contract/faces/base.py square_crop with context 1.0), or nil when there is none. For real photos; the tiny
    /// world's bundles (identity.detector "world") take aligned face crops such as examples/face_a.png.
    public static func largestFace(in image: CGImage) throws -> CGImage? {
        let request = VNDetectFaceRectanglesRequest()
        try VNImageRequestHandler(cgImage: image, options: [:]).perform([request])
        let faces = request.results ?? []
        guard let face = faces.max(by: { $0.boundingBox.width * $0.boundingBox.height
                                             < $1.boundingBox.width * $1.boundingBox.height }) else { return nil }
        let W = CGFloat(image.width), H = CGFloat(image.height)
        let box = face.boundingBox  // normalised, origin bottom-left
        let side = max(box.width * W, box.height * H)
        let rect = CGRect(x: box.midX * W - side / 2, y: (1 - box.midY) * H - side / 2, width: side, height: side)
            .integral.intersection(CGRect(x: 0, y: 0, width: W, height: H))
        return image.cropping(to: rect)
    }
}
#endif
