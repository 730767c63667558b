"""One reader/writer per boundary format, shared by every stage.

``wds`` (WebDataset tar shards: members, samples, image checks), ``coco``
(COCO JSON for detection and keypoints), ``voc`` (VOC image lists and
palette PNG masks).
"""
