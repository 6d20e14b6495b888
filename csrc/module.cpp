// classicnets_ext._C: importing it runs the static op registrations. The few functions it exports report
// how the library was built; the ops themselves are reached through torch.ops.classicnets_ext.
#include <Python.h>

#include <string>

#include "common/cpu_dispatch.h"

namespace {

PyObject* cpu_capability(PyObject*, PyObject*) {
  return PyUnicode_FromString(cnx::cpu::capability_name(cnx::cpu::capability()));
}

PyObject* build_info(PyObject*, PyObject*) {
#ifdef WITH_CUDA
  PyObject* cuda = Py_True;
#else
  PyObject* cuda = Py_False;
#endif
#ifdef CNX_CUDA_ARCHS
  const char* archs = CNX_CUDA_ARCHS;
#else
  const char* archs = "";
#endif
  return Py_BuildValue("{s:s,s:O,s:s}", "version", CLASSICNETS_VERSION, "cuda", cuda, "cuda_archs", archs);
}

PyMethodDef methods[] = {
    {"cpu_capability", cpu_capability, METH_NOARGS, "Instruction set the CPU kernels run with."},
    {"build_info", build_info, METH_NOARGS, "How this extension was compiled."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "classicnets_ext compiled kernels", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
