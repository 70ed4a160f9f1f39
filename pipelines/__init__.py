"""Ray jobs and their YAML configs, installed as ``sddr_pipeline.pipelines``."""
