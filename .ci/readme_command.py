"""Print the README's shell block marked ``<!-- ci:NAME ... -->`` (so CI runs it verbatim).

Usage: python3 .ci/readme_command.py NAME [README]
"""

import re
import sys
from pathlib import Path

name = sys.argv[1]
readme = Path(sys.argv[2] if len(sys.argv) > 2 else "README.md").read_text(encoding="utf-8")
pattern = rf"<!-- ci:{re.escape(name)}\b[^>]*-->\s*```bash\n(.*?)\n```"
found = re.findall(pattern, readme, flags=re.S)
if len(found) != 1:
    sys.exit(f"README.md: expected one bash block marked <!-- ci:{name} -->, found {len(found)}")
print(found[0].strip())
