"""What ``dg scaffold defs batch_pipelines.BatchPipelineComponent <path>`` writes: a pipeline that
loads and runs as it is.

A pipeline needs a source DataFrame, which the component never defines (it is the user's asset),
so the scaffold writes one beside it. A folder whose ``defs.yaml`` is a component holds nothing
else Dagster loads, so the folder is a ``DefsFolderComponent`` holding both::

    <path>/defs.yaml            the folder (Dagster loads what is in it)
    <path>/texts.py             the source asset, <name>_texts: replace it with your table
    <path>/pipeline/defs.yaml   the BatchPipelineComponent over it, on the embedded local provider
                                (no key, no network), with a commented provider block to switch
"""

from __future__ import annotations

import re

import dagster as dg
from dagster.components.component_scaffolding import scaffold_component

__all__ = ["BatchPipelineScaffolder"]

_SOURCE = '''"""The source of the {name} pipeline: one request per row. Replace it with your own asset
(any asset returning a pandas DataFrame; give the component its key and, if partitioned, its
partitions_def)."""

import dagster as dg
import pandas as pd


@dg.asset
def {name}_texts() -> pd.DataFrame:
    return pd.DataFrame(
        {{
            "text_id": ["t1", "t2", "t3"],
            "text": [
                "Hamlet is one of Shakespeare's most famous tragedies",
                "Scientists discover a new potentially habitable planet",
                "How to make a delicious braised pork dish",
            ],
        }}
    )
'''

_FOLDER = """# This folder's definitions: the source asset (texts.py) and the pipeline over it (pipeline/).
type: dagster.DefsFolderComponent
"""

_PIPELINE = """type: {type_name}
attributes:
  name: {name}
  source: {name}_texts
  request:
    model: gpt-4o-mini
    key_column: text_id
    messages:
      - {{role: system, content: "Classify the text as Literature, News, Academic, Technology or Lifestyle."}}
      - {{role: user, content: "{{text}}"}}
  # Without a provider block the pipeline runs on the embedded local provider. A real one:
  # provider:
  #   provider: openai
  #   api_key_env: OPENAI_API_KEY  # the variable's name; a key written here is refused
"""


class BatchPipelineScaffolder(dg.Scaffolder):
    """Writes the folder above (YAML format); ``component.py`` as Dagster does otherwise."""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        if request.scaffold_format != "yaml" or request.append:
            scaffold_component(request)
            return
        name = _identifier(request.target_path.name)
        (request.target_path / "pipeline").mkdir(exist_ok=True)
        (request.target_path / "defs.yaml").write_text(_FOLDER, encoding="utf-8")
        (request.target_path / "texts.py").write_text(_SOURCE.format(name=name), encoding="utf-8")
        pipeline = _PIPELINE.format(type_name=request.type_name, name=name)
        (request.target_path / "pipeline" / "defs.yaml").write_text(pipeline, encoding="utf-8")


def _identifier(folder: str) -> str:
    """The folder's name as the pipeline's name (a prefix of asset keys and a Python function name)."""
    name = re.sub(r"\W", "_", folder).strip("_").lower() or "batch_pipeline"
    return f"p_{name}" if name[0].isdigit() else name
