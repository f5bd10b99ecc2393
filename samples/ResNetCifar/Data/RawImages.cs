namespace ResNetCifar.Data;

/// <summary>Decoded images as stored on disk: bytes in (N, C, H, W) order and one label byte per image.</summary>
internal sealed record RawImages(byte[] Pixels, byte[] Labels, int Channels, int Height, int Width)
{
    public int Count => Labels.Length;
}
