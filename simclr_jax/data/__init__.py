"""Data: the sources a dataset string names (registry: TFDS names, folder:), decoding and its
cache, where the images live during training (pipeline: on the device or streamed by grain
workers), and the views a method trains on, made on the accelerator (views, augment). Stands on
core only.

    source = registry.get('cifar10_jpeg', data_dir)
    inputs = pipeline.make_inputs(source, rows, 'auto', mesh, batch_size, seed)
    views = views.make_views(key, images_uint8, spec)
"""
