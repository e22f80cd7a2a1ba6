"""Video files → YouTube-8M frame features, without Beam: decoding, VGGish audio, image backbones, PCA.

The Beam pipeline that uses these pieces is `pipelines.extract`.
"""
